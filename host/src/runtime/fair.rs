//! Fair shares of the sandbox pool. The pool holds a fixed number of sandboxes; a step
//! takes one for its run. A plain FIFO let one company's backlog (128 waiting steps)
//! hold every sandbox until other companies' steps ran out of deadline. Here each
//! company runs at most its own number of steps at once, may keep at most so many
//! waiting, and waiting companies take free sandboxes in turn (round robin across
//! companies, first come first served within one), so one company's backlog cannot
//! starve another's.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::oneshot;

/// How much of the pool one company may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompanyShare {
    /// Steps of one company in a sandbox at once.
    pub max_running: usize,
    /// Steps of one company waiting for a sandbox; one more is refused at once.
    pub max_waiting: usize,
}

/// Why no sandbox was handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    /// None became free for this step within its wait.
    #[error("no sandbox became free in time")]
    TimedOut,
    /// The company already has `max_waiting` steps waiting.
    #[error("the company already has {0} steps waiting for a sandbox")]
    QueueFull(usize),
}

struct Waiter {
    id: u64,
    max_running: usize,
    tx: oneshot::Sender<SandboxSlot>,
}

#[derive(Default)]
struct Inner {
    free: usize,
    running: HashMap<String, usize>,
    queues: HashMap<String, VecDeque<Waiter>>,
    /// Companies with waiters, in the order they get the next free sandbox.
    turn: VecDeque<String>,
    waiting: usize,
    next_id: u64,
}

/// The pool's sandboxes, shared fairly between companies.
pub struct FairSlots {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for FairSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FairSlots")
            .field("capacity", &self.capacity)
            .field("in_use", &self.in_use())
            .field("waiting", &self.waiting())
            .finish()
    }
}

/// One sandbox, held by a step until its store is dropped; dropping it hands the
/// sandbox to the next company in turn.
#[must_use]
pub struct SandboxSlot {
    slots: Option<Arc<FairSlots>>,
    company: String,
}

impl std::fmt::Debug for SandboxSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxSlot")
            .field("company", &self.company)
            .finish()
    }
}

impl Drop for SandboxSlot {
    fn drop(&mut self) {
        if let Some(slots) = self.slots.take() {
            let mut inner = slots.lock();
            inner.release(&self.company);
            FairSlots::dispatch(&slots, &mut inner);
        }
    }
}

impl Inner {
    fn running_of(&self, company: &str) -> usize {
        self.running.get(company).copied().unwrap_or(0)
    }

    fn take(&mut self, company: &str) {
        self.free -= 1;
        *self.running.entry(company.to_string()).or_default() += 1;
    }

    fn release(&mut self, company: &str) {
        self.free += 1;
        if let Some(n) = self.running.get_mut(company) {
            *n -= 1;
            if *n == 0 {
                self.running.remove(company);
            }
        }
    }

    fn remove_waiter(&mut self, company: &str, id: u64) {
        let Some(q) = self.queues.get_mut(company) else {
            return;
        };
        let before = q.len();
        q.retain(|w| w.id != id);
        self.waiting -= before - q.len();
        if q.is_empty() {
            self.queues.remove(company);
            self.turn.retain(|c| c != company);
        }
    }
}

impl FairSlots {
    /// A pool of `capacity` sandboxes.
    pub fn new(capacity: usize) -> Arc<FairSlots> {
        Arc::new(FairSlots {
            capacity,
            inner: Mutex::new(Inner {
                free: capacity,
                ..Inner::default()
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The lock guards counters only, each update complete before any call that
        // could panic, so a poisoned lock still holds consistent numbers.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sandboxes in the pool.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Sandboxes held by steps now.
    pub fn in_use(&self) -> usize {
        self.capacity - self.lock().free
    }

    /// Steps waiting for a sandbox now.
    pub fn waiting(&self) -> usize {
        self.lock().waiting
    }

    /// Hand free sandboxes to waiting companies in turn. A company at its running
    /// limit keeps its place and is passed over until one of its steps ends.
    fn dispatch(slots: &Arc<FairSlots>, inner: &mut Inner) {
        let mut passed_over = 0;
        while inner.free > 0 && passed_over < inner.turn.len() {
            let Some(company) = inner.turn.pop_front() else {
                break;
            };
            let running = inner.running_of(&company);
            let Some(queue) = inner.queues.get_mut(&company) else {
                continue;
            };
            let Some(front) = queue.front() else {
                inner.queues.remove(&company);
                continue;
            };
            if running >= front.max_running {
                inner.turn.push_back(company);
                passed_over += 1;
                continue;
            }
            let Some(waiter) = queue.pop_front() else {
                continue;
            };
            let now_empty = queue.is_empty();
            inner.waiting -= 1;
            if now_empty {
                inner.queues.remove(&company);
            } else {
                // Back of the line: the next free sandbox goes to another company.
                inner.turn.push_back(company.clone());
            }
            inner.take(&company);
            let slot = SandboxSlot {
                slots: Some(slots.clone()),
                company: company.clone(),
            };
            if let Err(mut unwanted) = waiter.tx.send(slot) {
                // The waiter gave up meanwhile: undo here (the lock is held, so the
                // slot's own drop must not take it again).
                unwanted.slots = None;
                inner.release(&company);
            }
            passed_over = 0;
        }
    }

    /// A sandbox for a step of `company`, waiting up to `wait` for its turn.
    pub async fn acquire(
        self: &Arc<Self>,
        company: &str,
        share: CompanyShare,
        wait: Duration,
    ) -> Result<SandboxSlot, SlotError> {
        let (id, rx) = {
            let mut inner = self.lock();
            // Everyone who could use a free sandbox already has one (dispatch runs on
            // every release and every new waiter), so a free sandbox here is this
            // step's unless its own company has steps waiting ahead of it.
            if inner.free > 0
                && inner.running_of(company) < share.max_running
                && !inner.queues.contains_key(company)
            {
                inner.take(company);
                return Ok(SandboxSlot {
                    slots: Some(self.clone()),
                    company: company.to_string(),
                });
            }
            let queued = inner.queues.get(company).map_or(0, VecDeque::len);
            if queued >= share.max_waiting {
                return Err(SlotError::QueueFull(share.max_waiting));
            }
            let (tx, rx) = oneshot::channel();
            let id = inner.next_id;
            inner.next_id += 1;
            if queued == 0 {
                inner.turn.push_back(company.to_string());
            }
            inner
                .queues
                .entry(company.to_string())
                .or_default()
                .push_back(Waiter {
                    id,
                    max_running: share.max_running,
                    tx,
                });
            inner.waiting += 1;
            FairSlots::dispatch(self, &mut inner);
            (id, rx)
        };
        let mut waiting = Waiting {
            slots: self,
            company,
            id,
            rx: Some(rx),
        };
        let rx = waiting.rx.as_mut().ok_or(SlotError::TimedOut)?;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(slot)) => {
                waiting.rx = None;
                Ok(slot)
            }
            _ => Err(SlotError::TimedOut),
        }
    }
}

/// A step in the queue. Dropped (timed out, or the request went away) it leaves the
/// queue, and a sandbox handed to it at that very moment goes back to the pool.
struct Waiting<'a> {
    slots: &'a Arc<FairSlots>,
    company: &'a str,
    id: u64,
    rx: Option<oneshot::Receiver<SandboxSlot>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        rx.close();
        // A slot sent before `close` is ours: dropping it releases it (and takes the
        // lock, so this comes before the queue clean-up below).
        drop(rx.try_recv());
        self.slots.lock().remove_waiter(self.company, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIDE: CompanyShare = CompanyShare {
        max_running: 100,
        max_waiting: 100,
    };
    const NOW: Duration = Duration::from_millis(0);

    #[tokio::test]
    async fn free_sandboxes_are_handed_out_until_the_pool_is_empty() {
        let pool = FairSlots::new(2);
        let a = pool.acquire("a", WIDE, NOW).await.unwrap();
        let _b = pool.acquire("b", WIDE, NOW).await.unwrap();
        assert_eq!(pool.in_use(), 2);
        assert_eq!(
            pool.acquire("c", WIDE, NOW).await.unwrap_err(),
            SlotError::TimedOut
        );
        // The timed-out waiter left the queue.
        assert_eq!(pool.waiting(), 0);
        drop(a);
        assert_eq!(pool.in_use(), 1);
        let _c = pool.acquire("c", WIDE, NOW).await.unwrap();
    }

    #[tokio::test]
    async fn one_company_runs_at_most_its_share_and_queues_at_most_its_limit() {
        let pool = FairSlots::new(10);
        let share = CompanyShare {
            max_running: 2,
            max_waiting: 1,
        };
        let x = pool.acquire("a", share, NOW).await.unwrap();
        let _y = pool.acquire("a", share, NOW).await.unwrap();
        // Sandboxes are free, but company a has its two.
        let pool2 = pool.clone();
        let third = tokio::spawn(async move {
            pool2
                .acquire("a", share, Duration::from_secs(30))
                .await
                .map(|_| ())
        });
        while pool.waiting() == 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            pool.acquire("a", share, NOW).await.unwrap_err(),
            SlotError::QueueFull(1)
        );
        // Another company is not held up by a's limit.
        let _b = pool.acquire("b", share, NOW).await.unwrap();
        drop(x);
        third.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn waiting_companies_take_free_sandboxes_in_turn() {
        let pool = FairSlots::new(1);
        let first = pool.acquire("a", WIDE, NOW).await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Company a queues five steps, then b queues one: b must not wait for all of a's.
        for company in ["a", "a", "a", "a", "a", "b"] {
            let (pool2, order2) = (pool.clone(), order.clone());
            let before = pool.waiting();
            tasks.push(tokio::spawn(async move {
                let slot = pool2
                    .acquire(company, WIDE, Duration::from_secs(30))
                    .await
                    .unwrap();
                order2.lock().unwrap().push(company);
                drop(slot);
            }));
            while pool.waiting() == before {
                tokio::task::yield_now().await;
            }
        }
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(order, ["a", "b", "a", "a", "a", "a"], "{order:?}");
        assert_eq!((pool.in_use(), pool.waiting()), (0, 0));
    }
}
