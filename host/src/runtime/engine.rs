//! The wasmtime engine a host process uses, its `Linker`, and the epoch ticker that
//! enforces step deadlines. Everything compiled or instantiated in the process hangs off
//! this, so tests and servers create it once and share it.
//!
//! It holds two compilers' engines ([`CodeTier`]): Cranelift's, which compiles every
//! module, and Winch's (wasmtime's baseline compiler), which compiles a large module
//! (a JavaScript or Python runtime, tens of megabytes) several times faster into slower
//! code. A large module with no Cranelift code in the compile cache runs its first steps
//! on Winch's code while Cranelift compiles it in the background (`LoadedModule`'s tier
//! up). Both engines have the same settings, the same linker and the same limits; a
//! step's store is made by the engine its module's code belongs to.

use super::bindings::Module;
use super::fair::{CompanyShare, FairSlots, SandboxSlot, SlotError};
use super::sandbox::StepState;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Strategy,
};

/// How often the epoch advances: the granularity of deadlines and of yielding a
/// long-running guest back to the async executor.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Bytes of a sandbox's memory kept resident between steps when the kernel reports
/// written pages: more than the first-party modules' working set, so a step returns
/// nothing to the kernel and takes no page faults.
const RESIDENT_WITH_PAGEMAP: usize = 4 * 1024 * 1024;

/// Modules of at least this many bytes start on the quick tier by default.
pub const QUICK_TIER_MIN_BYTES: usize = 4 * 1024 * 1024;

/// Which compiler a module's code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeTier {
    /// Cranelift, optimising: what every module runs on once compiled.
    Optimized,
    /// Winch, single pass: a large module's first steps, while Cranelift compiles it.
    Quick,
}

impl CodeTier {
    /// `optimized` or `quick` (logs, the module listing).
    pub fn as_str(self) -> &'static str {
        match self {
            CodeTier::Optimized => "optimized",
            CodeTier::Quick => "quick",
        }
    }
}

/// The quick tier's engine and linker.
struct QuickTier {
    engine: Engine,
    linker: Linker<StepState>,
}

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Try the pooling allocator (falls back to on-demand when the pool cannot be reserved).
    pub pooling: bool,
    /// Concurrent instances the pool holds.
    pub pool_instances: u32,
    /// The largest linear memory any step may be given (per-step caps are at most this).
    pub max_memory_ceiling: usize,
    /// Guest call-stack size (deep recursion traps beyond it).
    pub max_wasm_stack: usize,
    /// Between steps, reset only the pages a step wrote and keep them resident, where
    /// Linux can report them (PAGEMAP_SCAN, 6.7+). Off: reset a fixed first part of
    /// each memory and return the rest to the kernel.
    pub reset_written_pages: bool,
    /// Modules of at least this many bytes with no optimised code in the compile cache
    /// start on the quick tier ([`CodeTier::Quick`]); None: every module waits for
    /// Cranelift.
    pub quick_tier_min_bytes: Option<usize>,
    /// Compile a module started on the quick tier with Cranelift in the background and
    /// swap that in (off: it stays on quick code; tests of quick-tier code use this).
    pub tier_up: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            pooling: true,
            pool_instances: 128,
            max_memory_ceiling: 1024 * 1024 * 1024,
            max_wasm_stack: 512 * 1024,
            reset_written_pages: true,
            quick_tier_min_bytes: Some(QUICK_TIER_MIN_BYTES),
            tier_up: true,
        }
    }
}

/// The shared engine, linker and deadline clock.
pub struct SandboxEngine {
    engine: Engine,
    linker: Linker<StepState>,
    /// Winch's engine, where it is available and configured.
    quick: Option<QuickTier>,
    pooling: bool,
    ticker_stop: Arc<AtomicBool>,
    config: EngineConfig,
    /// The pool's sandboxes, shared fairly between companies: a step beyond them waits
    /// for its company's turn (within its deadline) instead of failing to instantiate.
    slots: Arc<FairSlots>,
}

impl std::fmt::Debug for SandboxEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxEngine")
            .field("pooling", &self.pooling)
            .field("config", &self.config)
            .finish()
    }
}

fn base_config(config: &EngineConfig) -> Config {
    let mut c = Config::new();
    c.wasm_component_model(true);
    c.epoch_interruption(true);
    c.max_wasm_stack(config.max_wasm_stack);
    // Guests must not be able to tell the host's CPU apart or change behaviour across
    // hosts; NaN canonicalisation keeps float results identical everywhere.
    c.cranelift_nan_canonicalization(true);
    c
}

/// The linker every step's store is linked with: WASI, the workspace budgets, the flow8
/// interfaces and `wasi:http`.
fn flow8_linker(engine: &Engine) -> anyhow::Result<Linker<StepState>> {
    let mut linker = Linker::<StepState>::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(|e| anyhow::anyhow!("cannot link WASI: {e}"))?;
    super::workspace_quota::add_to_linker(&mut linker)
        .map_err(|e| anyhow::anyhow!("cannot link the workspace budgets: {e}"))?;
    Module::add_to_linker::<_, HasSelf<StepState>>(&mut linker, |s| s)
        .map_err(|e| anyhow::anyhow!("cannot link the flow8 interfaces: {e}"))?;
    crate::capabilities::wasi_http::add_to_linker(&mut linker)
        .map_err(|e| anyhow::anyhow!("cannot link wasi:http: {e}"))?;
    Ok(linker)
}

/// Winch's engine: the same settings, instances allocated on demand (a module runs on
/// it only until its optimised code is ready, so it reserves no pool of its own; the
/// store's limiter caps its memory and tables as on the pool).
fn quick_tier(config: &EngineConfig) -> anyhow::Result<QuickTier> {
    let mut c = base_config(config);
    c.strategy(Strategy::Winch);
    let engine = Engine::new(&c).map_err(|e| anyhow::anyhow!("{e}"))?;
    let linker = flow8_linker(&engine)?;
    Ok(QuickTier { engine, linker })
}

impl SandboxEngine {
    /// Build the engine: pooling where the pool can be reserved, on-demand otherwise
    /// (logged, never fatal).
    pub fn new(config: EngineConfig) -> anyhow::Result<Arc<SandboxEngine>> {
        let mut pooling = false;
        let mut engine = None;
        if config.pooling {
            let mut c = base_config(&config);
            let mut pool = PoolingAllocationConfig::default();
            let n = config.pool_instances;
            pool.total_component_instances(n)
                .total_core_instances(n * 4)
                .total_memories(n * 2)
                .total_tables(n * 4)
                .max_memories_per_component(4)
                .max_tables_per_component(8)
                .max_core_instances_per_component(16)
                .max_memory_size(config.max_memory_ceiling)
                .table_keep_resident(64 * 1024)
                .async_stack_keep_resident(128 * 1024)
                .decommit_batch_size(32);
            // Returning memory to the kernel (madvise) after every step, and the
            // copy-on-write faults of the next step on the module's data pages, each
            // cost a TLB shootdown across cores. Where Linux can report which pages a
            // step wrote (PAGEMAP_SCAN, 6.7+), only those are reset, by copying, up to
            // a step's typical working set, and they stay resident for the next step.
            // Elsewhere the first pages of each slot are reset with memset (its cost
            // grows with the size kept, so that size is small).
            if config.reset_written_pages && PoolingAllocationConfig::is_pagemap_scan_available() {
                pool.pagemap_scan(Enabled::Yes)
                    .linear_memory_keep_resident(RESIDENT_WITH_PAGEMAP);
            } else {
                pool.linear_memory_keep_resident(256 * 1024);
            }
            c.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
            match Engine::new(&c) {
                Ok(e) => {
                    pooling = true;
                    engine = Some(e);
                }
                Err(e) => tracing::warn!(
                    error = %e,
                    "pooling allocator unavailable (cannot reserve its memory); using on-demand allocation"
                ),
            }
        }
        let engine = match engine {
            Some(e) => e,
            None => Engine::new(&base_config(&config))
                .map_err(|e| anyhow::anyhow!("cannot create wasmtime engine: {e}"))?,
        };
        let linker = flow8_linker(&engine)?;
        let quick = match config.quick_tier_min_bytes {
            Some(_) => match quick_tier(&config) {
                Ok(q) => Some(q),
                Err(e) => {
                    tracing::warn!(error = %e, "the quick compiler tier (Winch) is unavailable; large modules wait for Cranelift");
                    None
                }
            },
            None => None,
        };

        let ticker_stop = Arc::new(AtomicBool::new(false));
        {
            let engines: Vec<Engine> = std::iter::once(engine.clone())
                .chain(quick.as_ref().map(|q| q.engine.clone()))
                .collect();
            let stop = ticker_stop.clone();
            std::thread::Builder::new()
                .name("flow8-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        for e in &engines {
                            e.increment_epoch();
                        }
                    }
                })?;
        }
        tracing::debug!(pooling, "sandbox engine ready");
        Ok(Arc::new(SandboxEngine {
            engine,
            linker,
            quick,
            pooling,
            ticker_stop,
            slots: FairSlots::new(config.pool_instances as usize),
            config,
        }))
    }

    /// The wasmtime engine of optimised code.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The linker with WASI and the flow8 interfaces.
    pub fn linker(&self) -> &Linker<StepState> {
        &self.linker
    }

    /// The engine compiling code of `tier` (the optimised one when there is no quick
    /// tier).
    pub fn engine_of(&self, tier: CodeTier) -> &Engine {
        match (tier, &self.quick) {
            (CodeTier::Quick, Some(q)) => &q.engine,
            _ => &self.engine,
        }
    }

    /// The linker for code of `tier`.
    pub fn linker_of(&self, tier: CodeTier) -> &Linker<StepState> {
        match (tier, &self.quick) {
            (CodeTier::Quick, Some(q)) => &q.linker,
            _ => &self.linker,
        }
    }

    /// The tier a module of `size` bytes with no optimised code at hand starts on.
    pub fn first_tier(&self, size: usize) -> CodeTier {
        match self.config.quick_tier_min_bytes {
            Some(min) if self.quick.is_some() && size >= min => CodeTier::Quick,
            _ => CodeTier::Optimized,
        }
    }

    /// Whether the pooling allocator is in use.
    pub fn pooling(&self) -> bool {
        self.pooling
    }

    /// A sandbox slot for a step of `company`, waiting up to `wait` for the company's
    /// turn (see [`FairSlots`]). Hold it until the step's store is dropped (that
    /// returns the instance to the pool).
    pub async fn sandbox_slot(
        &self,
        company: &str,
        share: CompanyShare,
        wait: Duration,
    ) -> Result<SandboxSlot, SlotError> {
        self.slots.acquire(company, share, wait).await
    }

    /// Steps running in a sandbox now.
    pub fn sandboxes_in_use(&self) -> usize {
        self.slots.in_use()
    }

    /// Steps waiting for a sandbox now.
    pub fn sandboxes_waiting(&self) -> usize {
        self.slots.waiting()
    }

    /// The settings it was built with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// A string that changes whenever compiled code from another engine setup would not
    /// load here (wasmtime version, target, settings): part of the compile-cache key.
    pub fn compatibility_key(&self, tier: CodeTier) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine_of(tier)
            .precompile_compatibility_hash()
            .hash(&mut h);
        format!("{:016x}", h.finish())
    }
}

impl Drop for SandboxEngine {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}
