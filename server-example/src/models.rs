//! Which model a request runs on: the server's own (`default`), or a fine-tuned one named
//! by its job id. A fine-tuned model is copied from the job file store (shared by replicas)
//! into a local cache on first use, loads from there, and stays in a small LRU of loaded
//! models.
//!
//! Model ids come from the server (UUIDs it generated), and a file path or store name is built
//! only from an id that parsed as one, so no request can name a path.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use history_sink::FileStore;
use partialconv::{Inpainter, Precision, SelfEnsemble};
use uuid::Uuid;

use crate::error::AppError;

/// The id of the model the server was started with.
pub const DEFAULT_MODEL: &str = "default";

/// The model file of a finished job, inside its job folder.
pub const MODEL_FILE: &str = "model.safetensors";

/// Where the model of finished job `id` is kept in the job file store.
pub fn stored_model_name(id: Uuid) -> String {
    format!("jobs/{id}/{MODEL_FILE}")
}

/// Why [`ModelRegistry::get`] has no model to give.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// No finished job has this id (its model file is gone).
    #[error("no model `{0}`")]
    Unknown(String),
    /// The model file is there but does not load.
    #[error(transparent)]
    Load(partialconv::Error),
}

/// A resolved model id: what the worker pool groups batches by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ModelKey {
    /// The model the server was started with.
    #[default]
    Default,
    /// A finished fine-tune job's model, by job id.
    Tuned(Uuid),
}

impl std::fmt::Display for ModelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Default => f.write_str(DEFAULT_MODEL),
            Self::Tuned(id) => write!(f, "{id}"),
        }
    }
}

/// The fine-tuned models: copies of the stored ones in a local cache folder, and a small
/// LRU of the loaded ones.
pub struct ModelRegistry {
    files: FileStore,
    cache_dir: PathBuf,
    device: tch::Device,
    ensemble: SelfEnsemble,
    precision: Precision,
    capacity: usize,
    /// Most recently used last.
    cache: Mutex<Vec<(Uuid, Arc<Inpainter>)>>,
    loads: AtomicU64,
}

impl ModelRegistry {
    /// Models come from `files` ([`stored_model_name`]) and are copied into `cache_dir`.
    pub fn new(
        files: FileStore,
        cache_dir: PathBuf,
        device: tch::Device,
        ensemble: SelfEnsemble,
        capacity: usize,
    ) -> Self {
        Self {
            files,
            cache_dir,
            device,
            ensemble,
            precision: Precision::Fp32,
            capacity: capacity.max(1),
            cache: Mutex::new(Vec::new()),
            loads: AtomicU64::new(0),
        }
    }

    /// The kind the loaded models' convolutions compute in (`--precision`); fp32 unless set.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// The local copy of job `id`'s model (there once [`Self::fetch`] has run).
    pub fn model_path(&self, id: Uuid) -> PathBuf {
        self.cache_dir.join(format!("{id}.safetensors"))
    }

    /// `None`, empty or `default` → the server's model; a UUID → that fine-tuned model
    /// (whether it exists is [`Self::fetch`]'s to say); anything else → 404.
    pub fn parse(id: Option<&str>) -> Result<ModelKey, AppError> {
        match id.map(str::trim).filter(|s| !s.is_empty()) {
            None | Some(DEFAULT_MODEL) => Ok(ModelKey::Default),
            Some(id) => Uuid::parse_str(id)
                .map(ModelKey::Tuned)
                .map_err(|_| AppError::UnknownModel(id.chars().take(64).collect())),
        }
    }

    /// Makes sure the local cache has job `id`'s model, copying it from the store on first
    /// use: 404 `unknown_model` when the store has none, 503 when it cannot be reached.
    pub async fn fetch(&self, id: Uuid) -> Result<(), AppError> {
        let path = self.model_path(id);
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(());
        }
        let found = self
            .files
            .get_file(&stored_model_name(id), &path)
            .await
            .map_err(AppError::jobs)?;
        if found {
            tracing::info!(model = %id, "copied a fine-tuned model from the store");
            Ok(())
        } else {
            Err(AppError::UnknownModel(id.to_string()))
        }
    }

    /// Drops `id` from memory and from the local cache, so that a deleted model is not
    /// served again.
    pub fn unload(&self, id: Uuid) {
        self.cache.lock().unwrap().retain(|(k, _)| *k != id);
        let _ = std::fs::remove_file(self.model_path(id));
    }

    /// The loaded model for a fine-tuned id, loading it (on the calling thread) if needed.
    pub fn get(&self, id: Uuid) -> Result<Arc<Inpainter>, ModelError> {
        {
            let mut cache = self.cache.lock().unwrap();
            if let Some(pos) = cache.iter().position(|(k, _)| *k == id) {
                let entry = cache.remove(pos);
                let model = entry.1.clone();
                cache.push(entry);
                return Ok(model);
            }
        }
        // Loaded outside the lock, so a slow load does not stall requests for other models;
        // two workers racing on the same id both load it and one copy is dropped.
        let path = self.model_path(id);
        if !path.is_file() {
            return Err(ModelError::Unknown(id.to_string()));
        }
        let model = load(&path, self.device, self.precision)?;
        let model = Arc::new(model.with_ensemble(self.ensemble));
        self.loads.fetch_add(1, Ordering::Relaxed);
        let mut cache = self.cache.lock().unwrap();
        if let Some(pos) = cache.iter().position(|(k, _)| *k == id) {
            cache.remove(pos);
        }
        cache.push((id, model.clone()));
        while cache.len() > self.capacity {
            let (evicted, _) = cache.remove(0);
            tracing::info!(model = %evicted, "unloaded a fine-tuned model (LRU)");
        }
        Ok(model)
    }

    /// Ids of the loaded fine-tuned models, least recently used first.
    pub fn loaded(&self) -> Vec<Uuid> {
        self.cache.lock().unwrap().iter().map(|(k, _)| *k).collect()
    }

    /// How many times a fine-tuned model was read from disk.
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }
}

fn load(path: &Path, device: tch::Device, precision: Precision) -> Result<Inpainter, ModelError> {
    Inpainter::load_with(Some(path), device, precision).map_err(|e| {
        tracing::error!("loading {}: {e}", path.display());
        ModelError::Load(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use partialconv::{Model, ModelMeta, PConvUNetConfig, Storage};

    fn registry_with(n: usize, capacity: usize) -> (tempfile::TempDir, ModelRegistry, Vec<Uuid>) {
        let dir = tempfile::tempdir().unwrap();
        let reg = ModelRegistry::new(
            FileStore::local(dir.path().join("store")).unwrap(),
            dir.path().join("cache"),
            tch::Device::Cpu,
            // Not the default, so the test below sees it passed on.
            SelfEnsemble::Mirror,
            capacity,
        );
        std::fs::create_dir_all(dir.path().join("cache")).unwrap();
        let config = PConvUNetConfig {
            layer_size: 4,
            width: 4,
            ..Default::default()
        };
        let ids: Vec<Uuid> = (0..n).map(|_| Uuid::now_v7()).collect();
        for id in &ids {
            let path = dir.path().join("store").join(stored_model_name(*id));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            Model::new(ModelMeta::new(config), tch::Device::Cpu)
                .unwrap()
                .save(&path, Storage::F32)
                .unwrap();
        }
        (dir, reg, ids)
    }

    #[tokio::test]
    async fn models_come_from_the_store_and_nothing_else_names_one() {
        let (_dir, reg, ids) = registry_with(1, 2);
        assert_eq!(ModelRegistry::parse(None).unwrap(), ModelKey::Default);
        assert_eq!(ModelRegistry::parse(Some(" ")).unwrap(), ModelKey::Default);
        assert_eq!(
            ModelRegistry::parse(Some("default")).unwrap(),
            ModelKey::Default
        );
        let id = ids[0].to_string();
        assert_eq!(
            ModelRegistry::parse(Some(&id)).unwrap(),
            ModelKey::Tuned(ids[0])
        );
        assert!(!reg.model_path(ids[0]).exists());
        reg.fetch(ids[0]).await.unwrap();
        assert!(reg.model_path(ids[0]).is_file(), "copied into the cache");
        assert_eq!(reg.get(ids[0]).unwrap().ensemble(), SelfEnsemble::Mirror);
        for bad in ["../etc/passwd", "bundled"] {
            let e = ModelRegistry::parse(Some(bad)).unwrap_err();
            assert_eq!(e.code(), "unknown_model", "{bad}");
        }
        let e = reg.fetch(Uuid::now_v7()).await.unwrap_err();
        assert_eq!(e.code(), "unknown_model");
        reg.unload(ids[0]);
        assert!(
            !reg.model_path(ids[0]).exists(),
            "a deleted model leaves the cache"
        );
    }

    #[test]
    fn least_recently_used_model_is_unloaded_first() {
        let (_dir, reg, ids) = registry_with(3, 2);
        let (a, b, c) = (ids[0], ids[1], ids[2]);
        let rt = tokio::runtime::Runtime::new().unwrap();
        for id in &ids {
            rt.block_on(reg.fetch(*id)).unwrap();
        }
        reg.get(a).unwrap();
        reg.get(b).unwrap();
        reg.get(a).unwrap(); // a is now the most recent
        assert_eq!(
            reg.loads(),
            2,
            "a second use of a loaded model reads nothing"
        );
        reg.get(c).unwrap();
        assert_eq!(reg.loaded(), vec![a, c], "b was the least recently used");
        reg.get(b).unwrap();
        assert_eq!(reg.loads(), 4, "b was read again after its eviction");
        assert_eq!(reg.loaded(), vec![c, b]);
    }
}
