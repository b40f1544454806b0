//! Installs that are still compiling when the host answers.
//!
//! Installing a module compiles it (Cranelift), and a 12-19 MB JavaScript or Python
//! component takes seconds in a release host and up to a minute in a debug one. An
//! install over the API is answered as soon as it is done, or after
//! `module_install.answer_within_seconds` at the latest: then with `202 Accepted`, the
//! module marked `compiling`, and a status URL (`GET
//! /api/v1/admin/modules/installs/{install_id}`) that later reads `installed` (with the
//! answer a quick install gives) or `failed` (with the error's name and message). The
//! install goes on in the background either way, so a client that gives up or
//! disconnects loses nothing.
//!
//! The status lives on the host that took the upload, for an hour after it finished
//! (the module itself is in the store, so every host runs it once it is installed).

use crate::error::ErrorName;
use crate::server::error::ApiError;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a finished install's status is kept.
pub const KEEP_FINISHED: Duration = Duration::from_secs(3600);
/// The most install statuses a host keeps (the oldest finished ones go first).
pub const MAX_KEPT: usize = 1024;

/// Where an install stands.
#[derive(Debug, Clone)]
enum Stage {
    Compiling,
    Installed(Value),
    Failed { name: ErrorName, message: String },
}

#[derive(Debug, Clone)]
struct Job {
    company_id: String,
    digest: String,
    size: u64,
    started_at: String,
    stage: Stage,
    finished: Option<Instant>,
}

/// The most seconds a status read may wait for its install to end (`wait_seconds`).
pub const MAX_WAIT_SECONDS: u64 = 30;

/// The installs this host answered as compiling.
#[derive(Debug)]
pub struct InstallJobs {
    answer_within: Duration,
    jobs: Mutex<HashMap<String, Job>>,
    /// Woken whenever an install ends, for status reads that wait.
    finished: tokio::sync::Notify,
}

impl InstallJobs {
    /// Answer installs within `answer_within`, as compiling past it.
    pub fn new(answer_within: Duration) -> InstallJobs {
        InstallJobs {
            answer_within,
            jobs: Mutex::new(HashMap::new()),
            finished: tokio::sync::Notify::new(),
        }
    }

    /// How long an install is waited for before it is answered as compiling.
    pub fn answer_within(&self) -> Duration {
        self.answer_within
    }

    /// Record an install of `bytes` for `company_id` that is still compiling; returns
    /// its id and the `202` answer's body.
    pub fn start(&self, company_id: &str, bytes: &[u8]) -> (String, Value) {
        let id = format!("inst_{}", hex::encode(rand::random::<[u8; 12]>()));
        let job = Job {
            company_id: company_id.to_string(),
            digest: crate::runtime::module::digest(bytes),
            size: bytes.len() as u64,
            started_at: now_rfc3339(),
            stage: Stage::Compiling,
            finished: None,
        };
        let body = describe(&id, &job);
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        forget_old(&mut jobs);
        jobs.insert(id.clone(), job);
        (id, body)
    }

    /// The install `id` finished with `result` (the answer a quick install gives).
    pub fn finish(&self, id: &str, result: Result<Value, ApiError>) {
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(job) = jobs.get_mut(id) {
            job.stage = match result {
                Ok(module) => Stage::Installed(module),
                Err(e) => Stage::Failed {
                    name: e.name,
                    message: e.message,
                },
            };
            job.finished = Some(Instant::now());
        }
        drop(jobs);
        self.finished.notify_waiters();
    }

    /// [`InstallJobs::status`], waiting up to `wait` for a compiling install to end: the
    /// status as it is then (still `compiling` if it did not end in time).
    pub async fn status_within(&self, company_id: &str, id: &str, wait: Duration) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            // Registered before the status is read, so an end in between is not missed.
            let ended = self.finished.notified();
            let status = self.status(company_id, id)?;
            if status["status"] != "compiling" || tokio::time::Instant::now() >= deadline {
                return Some(status);
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return self.status(company_id, id);
            }
        }
    }

    /// The status of install `id`, if it is `company_id`'s and still kept.
    pub fn status(&self, company_id: &str, id: &str) -> Option<Value> {
        let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        let job = jobs.get(id).filter(|j| j.company_id == company_id)?;
        if job.finished.is_some_and(|t| t.elapsed() > KEEP_FINISHED) {
            return None;
        }
        Some(describe(id, job))
    }
}

/// The status URL of install `id`.
pub fn status_path(id: &str) -> String {
    format!("/api/v1/admin/modules/installs/{id}")
}

fn describe(id: &str, job: &Job) -> Value {
    let mut v = json!({
        "install_id": id,
        "digest": job.digest,
        "size": job.size,
        "started_at": job.started_at,
        "status_url": status_path(id),
    });
    match &job.stage {
        Stage::Compiling => v["status"] = json!("compiling"),
        Stage::Installed(module) => {
            v["status"] = json!("installed");
            v["module"] = module.clone();
        }
        Stage::Failed { name, message } => {
            v["status"] = json!("failed");
            v["error"] = json!(name);
            v["message"] = json!(message);
        }
    }
    v
}

/// Drop finished statuses past [`KEEP_FINISHED`], then the oldest finished ones past
/// [`MAX_KEPT`]. Installs still compiling are kept: each holds an admin's upload that
/// passed the body limit, and the registry compiles one digest once.
fn forget_old(jobs: &mut HashMap<String, Job>) {
    jobs.retain(|_, j| j.finished.is_none_or(|t| t.elapsed() <= KEEP_FINISHED));
    while jobs.len() >= MAX_KEPT {
        let Some(oldest) = jobs
            .iter()
            .filter_map(|(id, j)| j.finished.map(|t| (t, id.clone())))
            .min()
            .map(|(_, id)| id)
        else {
            break;
        };
        jobs.remove(&oldest);
    }
}

fn now_rfc3339() -> String {
    crate::store::now()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_reads_compiling_then_installed_or_failed_for_its_company_only() {
        let jobs = InstallJobs::new(Duration::ZERO);
        let (a, body) = jobs.start("acme", b"\0asm one");
        assert_eq!(body["status"], "compiling");
        assert_eq!(body["status_url"], status_path(&a));
        assert_eq!(body["size"], 8);
        assert_eq!(jobs.status("acme", &a).unwrap()["status"], "compiling");
        assert!(
            jobs.status("globex", &a).is_none(),
            "another company's install"
        );
        assert!(jobs.status("acme", "inst_nope").is_none());

        jobs.finish(&a, Ok(json!({"name": "m", "version": "1.0.0"})));
        let done = jobs.status("acme", &a).unwrap();
        assert_eq!(done["status"], "installed");
        assert_eq!(done["module"]["name"], "m");

        let (b, _) = jobs.start("acme", b"\0asm two");
        jobs.finish(
            &b,
            Err(ApiError::new(
                ErrorName::InvalidModule,
                "not a valid component",
            )),
        );
        let failed = jobs.status("acme", &b).unwrap();
        assert_eq!(failed["status"], "failed");
        assert_eq!(failed["error"], "invalid_module");
        assert_eq!(failed["message"], "not a valid component");
    }

    #[tokio::test]
    async fn a_waiting_status_read_answers_when_the_install_ends() {
        let jobs = std::sync::Arc::new(InstallJobs::new(Duration::ZERO));
        let (id, _) = jobs.start("acme", b"\0asm waited");
        let still = jobs
            .status_within("acme", &id, Duration::from_millis(1))
            .await
            .unwrap();
        assert_eq!(still["status"], "compiling", "no end within the wait");
        let reader = {
            let (jobs, id) = (jobs.clone(), id.clone());
            tokio::spawn(async move {
                jobs.status_within("acme", &id, Duration::from_secs(600))
                    .await
                    .unwrap()
            })
        };
        tokio::task::yield_now().await;
        jobs.finish(&id, Ok(json!({"name": "m"})));
        assert_eq!(reader.await.unwrap()["status"], "installed");
        assert!(
            jobs.status_within("globex", &id, Duration::from_secs(600))
                .await
                .is_none(),
            "another company's install answers at once, with nothing"
        );
    }

    #[test]
    fn finished_statuses_are_bounded_and_compiling_ones_are_kept() {
        let jobs = InstallJobs::new(Duration::ZERO);
        let (compiling, _) = jobs.start("acme", b"still compiling");
        let mut first = None;
        for i in 0..MAX_KEPT + 10 {
            let (id, _) = jobs.start("acme", format!("m{i}").as_bytes());
            jobs.finish(&id, Ok(json!({})));
            first.get_or_insert(id);
        }
        let kept = jobs.jobs.lock().unwrap().len();
        assert!(kept <= MAX_KEPT, "{kept} kept");
        assert!(jobs.status("acme", &compiling).is_some());
        assert!(
            jobs.status("acme", &first.unwrap()).is_none(),
            "the oldest finished status went first"
        );
    }
}
