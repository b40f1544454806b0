//! Checks of a change that reaches other processes within a stated bound rather than at
//! once (`record_cache_seconds`: a component deleted, a link unlinked or an API token
//! revoked through another host or the CLI).

use std::time::{Duration, Instant};

/// What one call got.
#[derive(Debug)]
pub enum Answer {
    /// The old record was still used (what the call got, for the failure message).
    Served(String),
    /// The change applied; the caller has checked the refusal is the expected one.
    Refused,
}

impl Answer {
    /// A step's answer (status and body): served when 200; otherwise it must be the
    /// `refused` one (status and error name), or the test fails.
    pub fn of_step((status, body): (u16, serde_json::Value), refused: (u16, &str)) -> Answer {
        if status == 200 {
            return Answer::Served(body.to_string());
        }
        assert_eq!(
            (status, body["error"].as_str()),
            (refused.0, Some(refused.1)),
            "{body}"
        );
        Answer::Refused
    }
}

/// Send `call` again and again until a call sent `bound` or more after `changed_at` was
/// refused. A call sent before the bound may still be served (that is the cache); one
/// sent past it being served fails the test, and so does no refusal within 30 s more.
pub async fn refused_past_the_bound<F, Fut>(changed_at: Instant, bound: Duration, mut call: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Answer>,
{
    let give_up = changed_at + bound + Duration::from_secs(30);
    loop {
        let sent_at = Instant::now();
        let past_bound = sent_at >= changed_at + bound;
        match call().await {
            Answer::Served(what) => assert!(
                !past_bound,
                "a call sent {:?} after the change (bound {bound:?}) still used the old record: {what}",
                sent_at - changed_at
            ),
            Answer::Refused if past_bound => return,
            Answer::Refused => {}
        }
        assert!(
            Instant::now() < give_up,
            "no call sent past the bound was answered"
        );
        // Not a wait for readiness: what is under test is a time bound, so the calls
        // themselves are the measurement, sent every 50 ms until one past the bound is
        // refused (there is no event for "the other host's kept record aged out").
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
