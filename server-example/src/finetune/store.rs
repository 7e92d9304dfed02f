//! Where a job's files are. Kept: in the shared [`FileStore`] under `jobs/<id>/` (photos,
//! the latest checkpoint, the model), so that any replica can train the job or serve its
//! model. Worked on: in a local folder, `DATA_DIR/finetune/work/<id>/`, that the replica
//! training the job fills from the store and empties when it stops.
//!
//! Names are built from the job's UUID and the server's own file names, never from what a
//! client sent.

use std::path::{Path, PathBuf};

use history_sink::{FileStore, HistoryError};
use uuid::Uuid;

use super::queue::JobQueue;
use super::status::{JobState, JobStatus};
use crate::models::{stored_model_name, MODEL_FILE};

/// The trainer's checkpoint file, in its run folder and in the store.
pub(super) const CHECKPOINT_FILE: &str = "checkpoint.safetensors";

/// The folders of a job's photos, in the store and in its work folder.
pub(super) const PHOTO_FOLDERS: [&str; 2] = ["train", "val"];

/// The store folder of job `id`.
pub(super) fn job_prefix(id: Uuid) -> String {
    format!("jobs/{id}")
}

/// A photo's name in the store; `folder` is one of [`PHOTO_FOLDERS`], `file` a name the
/// server made (`0003.png`).
pub(super) fn photo_name(id: Uuid, folder: &str, file: &str) -> String {
    format!("jobs/{id}/{folder}/{file}")
}

/// The latest checkpoint of job `id` in the store.
pub(super) fn checkpoint_name(id: Uuid) -> String {
    format!("jobs/{id}/{CHECKPOINT_FILE}")
}

/// The local folder a job trains in, laid out as the trainer expects: `train/`, `val/`,
/// `run/` (checkpoint, log) and the model once done.
pub(super) struct WorkDir(pub(super) PathBuf);

impl WorkDir {
    pub(super) fn run(&self) -> PathBuf {
        self.0.join("run")
    }

    pub(super) fn checkpoint(&self) -> PathBuf {
        self.run().join(CHECKPOINT_FILE)
    }

    pub(super) fn model(&self) -> PathBuf {
        self.0.join(MODEL_FILE)
    }

    /// Fills the folder from the store: the photos, and the latest checkpoint if there is
    /// one (what a job resumes from). Anything left from an earlier run here goes first.
    pub(super) async fn fetch(&self, files: &FileStore, id: Uuid) -> Result<(), HistoryError> {
        let _ = tokio::fs::remove_dir_all(&self.0).await;
        for folder in PHOTO_FOLDERS {
            let local = self.0.join(folder);
            tokio::fs::create_dir_all(&local)
                .await
                .map_err(|e| HistoryError::io(&local, e))?;
            for name in files.list(&format!("jobs/{id}/{folder}")).await? {
                let file = name.rsplit('/').next().unwrap_or_default();
                files.get_file(&name, &local.join(file)).await?;
            }
        }
        tokio::fs::create_dir_all(self.run())
            .await
            .map_err(|e| HistoryError::io(self.run(), e))?;
        files
            .get_file(&checkpoint_name(id), &self.checkpoint())
            .await?;
        Ok(())
    }

    /// Removes the folder; a failure is logged, since the store has what matters.
    pub(super) fn remove(&self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("removing {}: {e}", self.0.display());
            }
        }
    }
}

/// Moves jobs that an earlier version kept on disk (`jobs/<id>/job.json` beside their photos,
/// run folder and model) into the queue and the store, then moves each folder to
/// `imported/<id>`, where nothing reads it again. Returns how many were imported.
pub(super) async fn import_legacy(
    root: &Path,
    queue: &JobQueue,
    files: &FileStore,
) -> Result<usize, String> {
    let jobs_dir = root.join("jobs");
    let Ok(entries) = std::fs::read_dir(&jobs_dir) else {
        return Ok(0);
    };
    let mut imported = 0;
    for entry in entries.flatten() {
        let dir = entry.path();
        let Some(id) = dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| Uuid::parse_str(n).ok())
        else {
            continue;
        };
        let status: JobStatus = match std::fs::read(dir.join("job.json"))
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(s) => s,
            // A folder whose submit never finished.
            Err(e) => {
                tracing::warn!(
                    "not importing {}: no readable job.json ({e})",
                    dir.display()
                );
                continue;
            }
        };
        if status.job_id != id {
            tracing::warn!(
                "not importing {}: job.json names another job",
                dir.display()
            );
            continue;
        }
        let err = |e: HistoryError| format!("importing {}: {e}", dir.display());
        for folder in PHOTO_FOLDERS {
            if let Ok(photos) = std::fs::read_dir(dir.join(folder)) {
                for photo in photos.flatten() {
                    let name = photo
                        .file_name()
                        .to_str()
                        .map(|file| photo_name(id, folder, file))
                        .filter(|n| history_sink::file_store::validate_name(n).is_ok());
                    // Names the server chose, so this does not happen; one that did must not
                    // keep the server from starting.
                    let Some(name) = name else {
                        tracing::warn!(
                            "not importing {}: not a name the store takes",
                            photo.path().display()
                        );
                        continue;
                    };
                    files.put_file(&name, &photo.path()).await.map_err(err)?;
                }
            }
        }
        let checkpoint = dir.join("run").join(CHECKPOINT_FILE);
        if checkpoint.is_file() {
            files
                .put_file(&checkpoint_name(id), &checkpoint)
                .await
                .map_err(err)?;
        }
        let model = dir.join(MODEL_FILE);
        if status.state == JobState::Done && model.is_file() {
            files
                .put_file(&stored_model_name(id), &model)
                .await
                .map_err(err)?;
        }
        queue
            .import(&status)
            .await
            .map_err(|e| format!("importing job {id}: {e}"))?;
        let to = root.join("imported").join(id.to_string());
        std::fs::create_dir_all(root.join("imported"))
            .and_then(|()| std::fs::rename(&dir, &to))
            .map_err(|e| format!("moving {} to {}: {e}", dir.display(), to.display()))?;
        tracing::info!(job = %id, "imported a job kept on disk by an earlier version");
        imported += 1;
    }
    Ok(imported)
}
