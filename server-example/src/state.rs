//! Everything a handler can reach, built once from the [`Config`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use history_sink::{
    sink_from_url, FanoutSink, FileStore, HistoryError, HistorySink, ImageStore, SpoolOptions,
};
use tokio::sync::Semaphore;

use crate::auth::Auth;
use crate::backend::{Backend, Remote};
use crate::config::Config;
use crate::finetune::{FineTunes, FinetuneSettings, JobQueue, JobsConfig};
use crate::metrics::Metrics;
use crate::models::ModelRegistry;
use crate::owners::ImageOwners;
use crate::pool::{Pool, PoolSettings};
use crate::threads;

/// Request limits and policies that handlers check.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request body, in bytes.
    pub max_upload_bytes: usize,
    /// The same, in megabytes, for error messages.
    pub max_upload_mb: f64,
    /// Most pixels an image or mask may have.
    pub max_pixels: u64,
    /// Largest fine-tune upload, in bytes.
    pub finetune_max_bytes: usize,
    /// How long a request may wait for its result.
    pub timeout: Duration,
    /// Origins allowed by CORS (`*` for any); none: no CORS headers.
    pub cors_origins: Vec<String>,
}

/// Everything a handler can reach; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Where inference runs.
    pub backend: Arc<Backend>,
    /// `None` with `--history none`: events are not kept and `/api/v1/history` answers 501.
    pub history: Option<Arc<dyn HistorySink>>,
    /// `None` with `--images none`: results are returned but not kept.
    pub images: Option<Arc<ImageStore>>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Request limits.
    pub limits: Arc<Limits>,
    /// Inference requests admitted at once (reading a body, queued, running, storing): with
    /// the body limit, this bounds the memory that uploads can take.
    pub admission: Arc<Semaphore>,
    /// The server's model and the fine-tuned ones, by id.
    pub models: Arc<ModelRegistry>,
    /// `None` with `--remote-model`: jobs train where the model runs.
    pub finetune: Option<Arc<FineTunes>>,
    /// Who may call what (`--auth`), and the rate limit.
    pub auth: Arc<Auth>,
    /// Who owns each kept image; `None` with `--images none`.
    pub owners: Option<Arc<ImageOwners>>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A flag value that cannot work.
    #[error("{0}")]
    Config(String),
    /// The device does not exist or cannot be used.
    #[error(transparent)]
    Device(#[from] partialconv::Error),
    /// A history sink failed to open.
    #[error("history sink {url}: {source}")]
    History {
        /// The sink's URL.
        url: String,
        /// Why it failed.
        source: HistoryError,
    },
    /// The image store failed to open.
    #[error("image store {spec}: {source}")]
    Images {
        /// The `--images` value.
        spec: String,
        /// Why it failed.
        source: HistoryError,
    },
}

impl AppState {
    /// Opens the sinks and the image store, and starts the inference workers (which load the
    /// model in the background; `/readyz` says when they are done).
    pub async fn from_config(cfg: &Config) -> Result<Self, StartupError> {
        if cfg.max_upload_mb <= 0.0
            || cfg.queue == 0
            || cfg.batch_max == 0
            || cfg.history_spool_max_mb.is_nan()
            || cfg.history_spool_max_mb <= 0.0
        {
            return Err(StartupError::Config(
                "--max-upload-mb, --queue, --batch-max and --history-spool-max-mb must be \
                 positive"
                    .into(),
            ));
        }
        let auth = Auth::new(
            cfg.auth.clone(),
            &cfg.trusted_proxy,
            cfg.rate_limit,
            cfg.public_metrics,
            &cfg.session_key_file
                .clone()
                .unwrap_or_else(|| cfg.data_dir.join("session.key")),
        )
        .map_err(StartupError::Config)?;
        let metrics = Arc::new(Metrics::default());
        let history = open_history(cfg).await?;
        let images = open_images(cfg)?;
        let owners = match &images {
            Some(_) => {
                let url = cfg.owners_url();
                let owners = ImageOwners::open(&url)
                    .await
                    .map_err(|e| StartupError::Config(format!("image owner index {url}: {e}")))?;
                Some(Arc::new(owners))
            }
            None => None,
        };
        let remote = !cfg.remote_model.is_empty();
        let device = if remote {
            tch::Device::Cpu
        } else {
            partialconv::inpainter::parse_device(&cfg.device)?
        };
        let finetune_dir = cfg.data_dir.join("finetune");
        let files = job_files(cfg, images.as_deref())?;
        let models = Arc::new(
            ModelRegistry::new(
                files.clone(),
                finetune_dir.join("models"),
                device,
                cfg.ensemble,
                cfg.loaded_models,
            )
            .with_precision(cfg.precision),
        );
        let intra_op_threads = threads::default_intra_op_threads();
        let (backend, finetune) = if remote {
            (
                Backend::Remote(Box::new(Remote::new(
                    &cfg.remote_model,
                    cfg.remote_model_token.clone(),
                    cfg.workers,
                    cfg.queue,
                    cfg.timeout(),
                ))),
                None,
            )
        } else {
            let pool = Pool::start(
                PoolSettings {
                    model: cfg.model.clone(),
                    device,
                    ensemble: cfg.ensemble,
                    precision: cfg.precision,
                    workers: cfg.workers,
                    queue: cfg.queue,
                    batch_max: cfg.batch_max,
                    batch_window: Duration::from_millis(cfg.batch_window_ms),
                    max_pixels: cfg.max_pixels,
                    intra_op_threads: Some(intra_op_threads),
                },
                metrics.clone(),
                models.clone(),
            );
            let url = cfg.jobs_url();
            let queue = JobQueue::open(&url)
                .await
                .map_err(|e| StartupError::Config(format!("job database {url}: {e}")))?;
            if url.starts_with("mysql://") && matches!(files, FileStore::Local(_)) {
                // Right for one model tier; replicas each need the others' files.
                tracing::warn!(
                    "fine-tune jobs are shared through {url}, but their files are in a local \
                     folder: replicas must share it, or use --images s3://… (docs/deploy.md)"
                );
            }
            if cfg.job_lease_secs < 3 {
                return Err(StartupError::Config(
                    "--job-lease-secs must be at least 3 (heartbeats go every third of it)".into(),
                ));
            }
            let jobs = JobsConfig {
                root: finetune_dir.clone(),
                queue,
                files,
                replica: replica_name(),
                lease: Duration::from_secs(cfg.job_lease_secs),
            };
            let finetune = FineTunes::open(
                jobs,
                finetune_settings(cfg, device),
                models.clone(),
                history.clone(),
                metrics.clone(),
            )
            .await
            .map_err(|e| StartupError::Config(format!("{}: {e}", finetune_dir.display())))?;
            (Backend::Local(pool), Some(Arc::new(finetune)))
        };
        let admitted = 2 * (cfg.workers.max(1) + cfg.queue);
        Ok(Self {
            admission: Arc::new(Semaphore::new(admitted)),
            backend: Arc::new(backend),
            history,
            images,
            metrics,
            models,
            finetune,
            auth: Arc::new(auth),
            owners,
            limits: Arc::new(Limits {
                max_upload_bytes: cfg.max_upload_bytes(),
                max_upload_mb: cfg.max_upload_mb,
                max_pixels: cfg.max_pixels,
                finetune_max_bytes: cfg.finetune_max_bytes(),
                timeout: cfg.timeout(),
                cors_origins: cfg.cors_origin.clone(),
            }),
        })
    }
}

fn finetune_settings(cfg: &Config, device: tch::Device) -> FinetuneSettings {
    FinetuneSettings {
        max_images: cfg.finetune_max_images,
        max_bytes: cfg.finetune_max_bytes(),
        max_pixels: cfg.finetune_max_pixels,
        max_queued: cfg.finetune_max_queued,
        default_steps: cfg.finetune_steps.clamp(1, cfg.finetune_max_steps.max(1)),
        max_steps: cfg.finetune_max_steps.max(1),
        threads: cfg.finetune_threads,
        nice: cfg.finetune_nice,
        train_size: cfg.finetune_train_size,
        batch: cfg.finetune_batch.max(1),
        val_size: cfg.finetune_val_size,
        checkpoint_every: cfg.finetune_checkpoint_every,
        val_every: cfg.finetune_val_every,
        vgg: cfg.finetune_vgg.clone(),
        device,
        default_model: cfg.model.clone(),
    }
}

impl AppState {
    /// The job manager, or 501 on a web tier (`--remote-model`).
    pub fn finetune(&self) -> Result<&Arc<FineTunes>, crate::AppError> {
        self.finetune
            .as_ref()
            .ok_or(crate::AppError::FinetuneUnavailable)
    }
}

/// Where fine-tune jobs keep their files: beside the images (the same folder or bucket), so
/// replicas that share images share jobs; in the data folder with `--images none`.
fn job_files(cfg: &Config, images: Option<&ImageStore>) -> Result<FileStore, StartupError> {
    let store = match images {
        Some(images) => FileStore::beside(images, "finetune"),
        None => FileStore::local(cfg.data_dir.join("finetune").join("store")),
    };
    store.map_err(|source| StartupError::Images {
        spec: cfg.images.clone().unwrap_or_else(|| "images".into()),
        source,
    })
}

/// This process's name in job claims: host and process id, unique among live replicas.
fn replica_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that much.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let host = if ok {
        let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).into_owned()
    } else {
        "localhost".to_owned()
    };
    format!("{host}:{}", std::process::id())
}

fn ensure_dir(dir: &Path) -> Result<(), StartupError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| StartupError::Config(format!("cannot create {}: {e}", dir.display())))
}

async fn open_history(cfg: &Config) -> Result<Option<Arc<dyn HistorySink>>, StartupError> {
    let urls = cfg.history_urls();
    if urls.is_empty() {
        return Ok(None);
    }
    // Under the data dir, never the working directory: two servers started from one
    // folder must not share a spool (it is locked, so the second would refuse to start).
    let spool = SpoolOptions {
        root: cfg.data_dir.join("history-spool"),
        max_bytes: (cfg.history_spool_max_mb * 1024.0 * 1024.0) as u64,
    };
    let mut sinks = Vec::new();
    for url in urls {
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if let Some(parent) = Path::new(path)
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
            {
                ensure_dir(parent)?;
            }
        }
        let sink = sink_from_url(&url, &spool)
            .await
            .map_err(|source| StartupError::History {
                url: url.clone(),
                source,
            })?;
        sinks.push(sink);
    }
    Ok(Some(if sinks.len() == 1 {
        sinks.remove(0)
    } else {
        Arc::new(FanoutSink::new(sinks))
    }))
}

fn open_images(cfg: &Config) -> Result<Option<Arc<ImageStore>>, StartupError> {
    let spec = cfg.images.clone().unwrap_or_else(|| "images".to_owned());
    if spec == "none" {
        return Ok(None);
    }
    if let Some(rest) = spec.strip_prefix("s3://") {
        return open_s3(&spec, rest).map(|s| Some(Arc::new(s)));
    }
    let dir = cfg.data_dir.join(&spec); // an absolute `spec` replaces data_dir
    let store = ImageStore::local(&dir).map_err(|source| StartupError::Images {
        spec: spec.clone(),
        source,
    })?;
    Ok(Some(Arc::new(store)))
}

#[cfg(feature = "s3")]
fn open_s3(spec: &str, rest: &str) -> Result<ImageStore, StartupError> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    let prefix = match prefix.trim_matches('/') {
        "" => String::new(),
        p => format!("{p}/"),
    };
    let cfg = history_sink::S3Config {
        bucket: bucket.to_owned(),
        // The AWS SDKs' variable for S3-compatible stores (MinIO, moto).
        endpoint: std::env::var("AWS_ENDPOINT_URL").ok(),
        prefix,
        ..Default::default()
    };
    ImageStore::s3(cfg).map_err(|source| StartupError::Images {
        spec: spec.to_owned(),
        source,
    })
}

#[cfg(not(feature = "s3"))]
fn open_s3(spec: &str, _rest: &str) -> Result<ImageStore, StartupError> {
    Err(StartupError::Images {
        spec: spec.to_owned(),
        source: HistoryError::FeatureDisabled("s3"),
    })
}
