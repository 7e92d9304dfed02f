//! Command-line flags, each with an environment variable for container deployments.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use partialconv::{Precision, SelfEnsemble};

/// The server's flags; `--help` lists them with their environment variables.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "server-example",
    version,
    about = "HTTP inpainting service with a web page: upload, brush, Go.",
    // This type's doc comment is for rustdoc, not for `--help`.
    long_about = None,
    args_conflicts_with_subcommands = true
)]
pub struct Config {
    /// A maintenance command instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address to listen on.
    #[arg(long, env = "PARTIALCONV_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,

    /// Who may use the server: `none` (no sign-in; a request's `user_id` names its user;
    /// loopback only unless --insecure-public), `tokens:FILE` (Bearer tokens from FILE, made
    /// by `server-example token add`), or `header:NAME` (the user in header NAME, set by an
    /// authenticating proxy at a --trusted-proxy address). docs/security.md.
    #[arg(long, env = "PARTIALCONV_AUTH", default_value = "none")]
    pub auth: crate::auth::AuthMode,

    /// Serve with `--auth none` on an address other machines can reach.
    #[arg(long, env = "PARTIALCONV_INSECURE_PUBLIC")]
    pub insecure_public: bool,

    /// Address or CIDR of a proxy whose identity and X-Forwarded-* headers are believed;
    /// repeatable, or comma-separated in the environment variable.
    #[arg(
        long = "trusted-proxy",
        env = "PARTIALCONV_TRUSTED_PROXY",
        value_delimiter = ',',
        value_name = "CIDR"
    )]
    pub trusted_proxy: Vec<String>,

    /// Requests per minute one identity may make (a signed-in user; without sign-in, an
    /// address), in bursts of as many; beyond it 429 with Retry-After. 0: no limit.
    #[arg(long, env = "PARTIALCONV_RATE_LIMIT", default_value_t = 0)]
    pub rate_limit: u32,

    /// Serve /metrics without authentication (for a scraper that cannot send a token).
    #[arg(long, env = "PARTIALCONV_PUBLIC_METRICS")]
    pub public_metrics: bool,

    /// Key that signs the page's session cookies (`--auth tokens`); made in the data folder
    /// when missing. Give replicas the same file, and they accept each other's sessions.
    /// Default: DATA_DIR/session.key.
    #[arg(long, env = "PARTIALCONV_SESSION_KEY_FILE", value_name = "FILE")]
    pub session_key_file: Option<PathBuf>,

    /// Model file (.safetensors); default: $PARTIALCONV_MODEL, else the bundled model.
    #[arg(long)]
    pub model: Option<PathBuf>,

    /// Device the model runs on: auto (a GPU when CUDA is present), cpu, cuda or cuda:N.
    #[arg(long, env = "PARTIALCONV_DEVICE", default_value = "cpu")]
    pub device: String,

    /// Flipped views each fill averages: flips (four forward passes, the best fill), mirror
    /// (two) or single (one; a CPU predict 2.4× faster, docs/benchmarks.md). Applies to
    /// fine-tuned models too.
    #[arg(long, env = "PARTIALCONV_ENSEMBLE", default_value = "flips")]
    pub ensemble: SelfEnsemble,

    /// The kind the network's convolutions compute in: fp32, bf16 (about twice as fast on a
    /// CPU with AVX512-BF16 or AMX), fp16 (CUDA) or auto (bf16 where the CPU has it, fp16 on
    /// CUDA, else fp32). Everything around the convolutions stays fp32.
    #[arg(long, env = "PARTIALCONV_PRECISION", default_value = "auto")]
    pub precision: Precision,

    /// History sink, repeatable: sqlite:PATH, mysql://…, kafka://BROKERS/TOPIC, or `none`.
    /// Default: sqlite:DATA_DIR/history.db. The environment variable takes `|`-separated URLs.
    #[arg(long = "history", env = "PARTIALCONV_HISTORY", value_name = "URL")]
    pub history: Vec<String>,

    /// Most undelivered history each spooling sink (Kafka, MySQL) keeps on disk under
    /// DATA_DIR/history-spool while its destination is down, in megabytes. Events beyond it
    /// are dropped and counted (`history_dropped_total`); requests are never held up.
    #[arg(
        long,
        env = "PARTIALCONV_HISTORY_SPOOL_MAX_MB",
        default_value_t = 1024.0,
        value_name = "MB"
    )]
    pub history_spool_max_mb: f64,

    /// Where uploads and results are kept: a directory, s3://BUCKET[/PREFIX], or `none`.
    /// Default: DATA_DIR/images.
    #[arg(long, env = "PARTIALCONV_IMAGES", value_name = "DIR|URL")]
    pub images: Option<String>,

    /// Directory for the default SQLite database, the image store and the history spools.
    #[arg(long, env = "PARTIALCONV_DATA_DIR", default_value = "server-data")]
    pub data_dir: PathBuf,

    /// Largest request body, in megabytes (base64 in /reconstruct counts at its encoded size).
    #[arg(long, env = "PARTIALCONV_MAX_UPLOAD_MB", default_value_t = 32.0)]
    pub max_upload_mb: f64,

    /// Largest image, in pixels; checked from the header, before decoding.
    #[arg(long, env = "PARTIALCONV_MAX_PIXELS", default_value_t = 50_000_000)]
    pub max_pixels: u64,

    /// Inference worker threads; they share one copy of the model.
    #[arg(long, env = "PARTIALCONV_WORKERS", default_value_t = 1)]
    pub workers: usize,

    /// Jobs that may wait for a worker; beyond that requests get 503 + Retry-After.
    #[arg(long, env = "PARTIALCONV_QUEUE", default_value_t = 16)]
    pub queue: usize,

    /// Origin allowed to call the API from a browser, repeatable; `*` for any.
    #[arg(
        long = "cors-origin",
        env = "PARTIALCONV_CORS_ORIGIN",
        value_delimiter = ','
    )]
    pub cors_origin: Vec<String>,

    /// Seconds a request may wait for its result (queue plus inference) before 504.
    #[arg(long, env = "PARTIALCONV_TIMEOUT_SECS", default_value_t = 120)]
    pub timeout_secs: u64,

    /// Most same-shape jobs one worker runs in one forward pass.
    #[arg(long, env = "PARTIALCONV_BATCH_MAX", default_value_t = 8)]
    pub batch_max: usize,

    /// How long a worker waits for more same-shape jobs before running a batch. 0 batches
    /// only what is already queued, which adds no latency.
    #[arg(long, env = "PARTIALCONV_BATCH_WINDOW_MS", default_value_t = 0)]
    pub batch_window_ms: u64,

    /// Send inference to other server-examples (model tiers) at these base URLs instead of
    /// loading a model: repeatable, or comma-separated in the environment variable. Requests
    /// are spread over the tiers whose /readyz answers; one that fails is retried once on
    /// another.
    #[arg(
        long = "remote-model",
        env = "PARTIALCONV_REMOTE_MODEL",
        value_delimiter = ',',
        value_name = "URL"
    )]
    pub remote_model: Vec<String>,

    /// Service token (`token add --service` on the model tier) the web tier sends to the
    /// --remote-model tier, naming the user each request is for.
    #[arg(long, env = "PARTIALCONV_REMOTE_MODEL_TOKEN", value_name = "TOKEN")]
    pub remote_model_token: Option<String>,

    /// Where fine-tune jobs are recorded: sqlite:PATH or mysql://…; replicas that share
    /// it share their jobs. Default: the --history MySQL database when there is one, else
    /// sqlite:DATA_DIR/jobs.db.
    #[arg(long, env = "PARTIALCONV_JOBS", value_name = "URL")]
    pub jobs: Option<String>,

    /// Seconds a replica's claim on a running job lasts without a heartbeat; after that
    /// another replica resumes the job from its last stored checkpoint.
    #[arg(long, env = "PARTIALCONV_JOB_LEASE_SECS", default_value_t = 30)]
    pub job_lease_secs: u64,

    /// Fine-tuned models kept loaded at once (least recently used first out). The server's
    /// own model is always loaded and does not count.
    #[arg(long, env = "PARTIALCONV_LOADED_MODELS", default_value_t = 2)]
    pub loaded_models: usize,

    /// Most photos in one fine-tune job (files, or entries of a zip).
    #[arg(long, env = "PARTIALCONV_FINETUNE_MAX_IMAGES", default_value_t = 300)]
    pub finetune_max_images: usize,

    /// Largest fine-tune upload, in megabytes: the request body, and the unpacked photos
    /// of a zip.
    #[arg(long, env = "PARTIALCONV_FINETUNE_MAX_MB", default_value_t = 256.0)]
    pub finetune_max_mb: f64,

    /// Largest fine-tune photo, in pixels, read from its header.
    #[arg(
        long,
        env = "PARTIALCONV_FINETUNE_MAX_PIXELS",
        default_value_t = 25_000_000
    )]
    pub finetune_max_pixels: u64,

    /// Fine-tune jobs one user may have queued or running at once.
    #[arg(long, env = "PARTIALCONV_FINETUNE_MAX_QUEUED", default_value_t = 2)]
    pub finetune_max_queued: usize,

    /// Steps of a job that does not say.
    #[arg(long, env = "PARTIALCONV_FINETUNE_STEPS", default_value_t = 500)]
    pub finetune_steps: u64,

    /// Most steps a job may ask for.
    #[arg(long, env = "PARTIALCONV_FINETUNE_MAX_STEPS", default_value_t = 5000)]
    pub finetune_max_steps: u64,

    /// libtorch intra-op threads of the training thread (inference keeps the default).
    #[arg(long, env = "PARTIALCONV_FINETUNE_THREADS", default_value_t = 1)]
    pub finetune_threads: usize,

    /// Nice value of the training thread (0..=19; higher yields more CPU to inference).
    #[arg(long, env = "PARTIALCONV_FINETUNE_NICE", default_value_t = 10)]
    pub finetune_nice: i32,

    /// Side of the square training crops.
    #[arg(long, env = "PARTIALCONV_FINETUNE_TRAIN_SIZE", default_value_t = 256)]
    pub finetune_train_size: u32,

    /// Crops per training step.
    #[arg(long, env = "PARTIALCONV_FINETUNE_BATCH", default_value_t = 4)]
    pub finetune_batch: i64,

    /// Side of the validation crops of the held-out photos.
    #[arg(long, env = "PARTIALCONV_FINETUNE_VAL_SIZE", default_value_t = 256)]
    pub finetune_val_size: u32,

    /// Steps between checkpoints (a restarted or cancelled job keeps the last one).
    #[arg(
        long,
        env = "PARTIALCONV_FINETUNE_CHECKPOINT_EVERY",
        default_value_t = 50
    )]
    pub finetune_checkpoint_every: u64,

    /// Steps between validations on the held-out photos (and always at the last step).
    #[arg(long, env = "PARTIALCONV_FINETUNE_VAL_EVERY", default_value_t = 100)]
    pub finetune_val_every: u64,

    /// VGG19 feature file (`partialconv import-vgg`) for the perceptual and style terms;
    /// without it jobs train with L1 + TV only.
    #[arg(long, env = "PARTIALCONV_FINETUNE_VGG")]
    pub finetune_vgg: Option<PathBuf>,
}

/// What `server-example` can do besides serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Manage the API tokens of `--auth tokens:FILE`.
    #[command(subcommand)]
    Token(TokenCommand),
}

/// `server-example token …`: the file keeps only the tokens' SHA-256, so a token is shown
/// once, when it is made. A running server picks changes up at its next request.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokenCommand {
    /// Make a token for USER; the token alone is the last line of standard output.
    Add {
        /// The user id the token signs in as.
        user: String,
        /// The tokens file (created when missing, mode 0600).
        #[arg(long)]
        file: PathBuf,
        /// Refuse the token after this many days.
        #[arg(long, value_name = "DAYS")]
        expires: Option<u32>,
        /// A web tier's token (`--remote-model-token`): it may act for the user it names in
        /// the `x-partialconv-user` header.
        #[arg(long)]
        service: bool,
    },
    /// Remove every token of USER.
    Revoke {
        /// The user whose tokens go.
        user: String,
        /// The tokens file.
        #[arg(long)]
        file: PathBuf,
    },
    /// Users and when their tokens were made and expire; never the tokens.
    List {
        /// The tokens file.
        #[arg(long)]
        file: PathBuf,
    },
}

impl Config {
    /// `--max-upload-mb` in bytes.
    pub fn max_upload_bytes(&self) -> usize {
        (self.max_upload_mb * 1024.0 * 1024.0) as usize
    }

    /// `--finetune-max-mb` in bytes.
    pub fn finetune_max_bytes(&self) -> usize {
        (self.finetune_max_mb * 1024.0 * 1024.0) as usize
    }

    /// `--timeout` as a duration.
    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    /// The job database in effect: `--jobs`, else the first MySQL history sink, else
    /// SQLite in the data folder.
    pub fn jobs_url(&self) -> String {
        if let Some(url) = self
            .jobs
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            return url.to_owned();
        }
        self.history_urls()
            .into_iter()
            .find(|u| u.starts_with("mysql://"))
            .unwrap_or_else(|| format!("sqlite:{}", self.data_dir.join("jobs.db").display()))
    }

    /// Where the image owner index is: the job database when it is MySQL (shared by
    /// replicas), else `sqlite:DATA_DIR/image-owners.db`.
    pub fn owners_url(&self) -> String {
        let jobs = self.jobs_url();
        if jobs.starts_with("mysql://") {
            jobs
        } else {
            format!("sqlite:{}", self.data_dir.join("image-owners.db").display())
        }
    }

    /// The history URLs in effect: the flags (each possibly `|`-joined), else the default.
    pub fn history_urls(&self) -> Vec<String> {
        let urls: Vec<String> = self
            .history
            .iter()
            .flat_map(|h| h.split('|'))
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(str::to_owned)
            .collect();
        if urls.is_empty() {
            vec![format!(
                "sqlite:{}",
                self.data_dir.join("history.db").display()
            )]
        } else if urls.iter().any(|u| u == "none") {
            Vec::new()
        } else {
            urls
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_defaults_to_sqlite_under_data_dir() {
        let c = Config::parse_from(["s", "--data-dir", "/d"]);
        assert_eq!(c.history_urls(), ["sqlite:/d/history.db"]);
        let c = Config::parse_from(["s", "--history", "none"]);
        assert!(c.history_urls().is_empty());
        let c = Config::parse_from(["s", "--history", "sqlite:a|kafka://h:1,h:2/t"]);
        assert_eq!(c.history_urls(), ["sqlite:a", "kafka://h:1,h:2/t"]);
    }

    #[test]
    fn jobs_follow_a_mysql_history_unless_named() {
        let c = Config::parse_from(["s", "--data-dir", "/d"]);
        assert_eq!(c.jobs_url(), "sqlite:/d/jobs.db");
        assert_eq!(c.owners_url(), "sqlite:/d/image-owners.db");
        let c = Config::parse_from(["s", "--data-dir", "/d", "--history", "mysql://h/db"]);
        assert_eq!(c.jobs_url(), "mysql://h/db");
        assert_eq!(c.owners_url(), "mysql://h/db");
        let c = Config::parse_from(["s", "--history", "mysql://h/db", "--jobs", "sqlite:j.db"]);
        assert_eq!(c.jobs_url(), "sqlite:j.db");
        let c = Config::parse_from(["s", "--remote-model", "http://a:1,http://b:2"]);
        assert_eq!(c.remote_model, ["http://a:1", "http://b:2"]);
    }
}
