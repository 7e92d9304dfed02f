//! Command-line flags, each with an environment variable for container deployments.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "server-example",
    version,
    about = "HTTP inpainting service with a web page: upload, brush, Go."
)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, env = "PARTIALCONV_BIND", default_value = "127.0.0.1:8080")]
    pub bind: String,

    /// Model file (.safetensors); default: $PARTIALCONV_MODEL, else the bundled model.
    #[arg(long)]
    pub model: Option<PathBuf>,

    /// Device the model runs on: cpu, cuda or cuda:N.
    #[arg(long, env = "PARTIALCONV_DEVICE", default_value = "cpu")]
    pub device: String,

    /// History sink, repeatable: sqlite:PATH, mysql://…, kafka://BROKERS/TOPIC, or `none`.
    /// Default: sqlite:DATA_DIR/history.db. The environment variable takes `|`-separated URLs.
    #[arg(long = "history", env = "PARTIALCONV_HISTORY", value_name = "URL")]
    pub history: Vec<String>,

    /// Where uploads and results are kept: a directory, s3://BUCKET[/PREFIX], or `none`.
    /// Default: DATA_DIR/images.
    #[arg(long, env = "PARTIALCONV_IMAGES", value_name = "DIR|URL")]
    pub images: Option<String>,

    /// Directory for the default SQLite database and image store.
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

    /// Send inference to another server-example at this base URL instead of loading a model.
    #[arg(long, env = "PARTIALCONV_REMOTE_MODEL", value_name = "URL")]
    pub remote_model: Option<String>,
}

impl Config {
    pub fn max_upload_bytes(&self) -> usize {
        (self.max_upload_mb * 1024.0 * 1024.0) as usize
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
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
}
