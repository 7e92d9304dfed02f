//! The job table and its persistence: one entry per job, holding the status (published to
//! pollers and event streams) and the cancel flag, and each job's `job.json`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::sync::watch;
use uuid::Uuid;

use super::status::JobStatus;
use crate::error::AppError;

/// One job in the table.
pub(super) struct Entry {
    /// The status; every change is published to the job's subscribers.
    pub(super) tx: watch::Sender<JobStatus>,
    /// Set to ask the running job to stop after its current step.
    pub(super) cancel: Arc<AtomicBool>,
}

impl Entry {
    pub(super) fn new(status: JobStatus) -> Self {
        Self {
            tx: watch::Sender::new(status),
            cancel: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// Every job the server knows, by id (ids are UUIDv7, so this is oldest first).
pub(super) type Table = BTreeMap<Uuid, Entry>;

/// The jobs kept under `jobs_dir`, one folder each; folders without a readable `job.json`
/// (a submit that never finished) are skipped.
pub(super) fn load(jobs_dir: &Path) -> std::io::Result<Table> {
    let mut table = BTreeMap::new();
    for entry in std::fs::read_dir(jobs_dir)? {
        let path = entry?.path();
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| Uuid::parse_str(n).ok())
        else {
            continue;
        };
        match read_status(&path.join("job.json")) {
            Ok(status) if status.job_id == id => {
                table.insert(id, Entry::new(status));
            }
            // A folder whose submit never finished: no job.json, or a broken one.
            Ok(_) | Err(_) => {
                tracing::warn!("ignoring {}: no readable job.json", path.display())
            }
        }
    }
    Ok(table)
}

/// Jobs of `user` that are queued or running.
pub(super) fn active_jobs(table: &BTreeMap<Uuid, Entry>, user: &str) -> usize {
    table
        .values()
        .filter(|e| {
            let s = e.tx.borrow();
            s.user_id == user && !s.state.is_over()
        })
        .count()
}

/// A job id from a URL; 404 `unknown_job` when it is not one.
pub(super) fn parse_job_id(id: &str) -> Result<Uuid, AppError> {
    Uuid::parse_str(id).map_err(|_| AppError::UnknownJob(id.chars().take(64).collect()))
}

/// Reads a `job.json`.
pub(super) fn read_status(path: &Path) -> std::io::Result<JobStatus> {
    let bytes = std::fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(std::io::Error::other)
}

/// `job.json`, written to a temporary file and renamed so a crash leaves the old or the new.
pub(super) fn write_status(dir: &Path, status: &JobStatus) -> std::io::Result<()> {
    let tmp = dir.join("job.json.writing");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(status).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, dir.join("job.json"))
}
