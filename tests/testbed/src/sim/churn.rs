//! Churn for a simulated istiod: applies R changes per second to a [`View`] — pod
//! restarts (remove + add with a new uid and IP), health flips, scale up/down keeping the
//! population near its target size, and rare service port changes — batched per tick
//! (all changes due in one tick go out in one `View::apply`).
//!
//! The sequence of changes is deterministic per seed; only how they are grouped into
//! ticks depends on timing. Benchmarks learn exactly when each change became visible
//! through [`ChangeObserver`]. This file never blocks the async runtime for long: one
//! tick's work is bounded by the rate.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use super::population::{Mutation, Population, PopulationError};
use peerd::view::View;
use peerd::xds::resource::Resource;
use peerd::xds::types::ResourceType;

/// Kinds of change, for statistics and observers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    PodRestart,
    StatusFlip,
    ScaleUp,
    ScaleDown,
    ServicePortChange,
}

#[derive(Debug, Clone)]
pub struct ChurnOptions {
    pub changes_per_sec: f64,
    /// Batching interval; every tick applies the changes due since the last one.
    pub tick: Duration,
    pub seed: u64,
    /// Size the population is kept around (defaults to the generated size).
    pub target_workloads: usize,
}

impl ChurnOptions {
    pub fn new(changes_per_sec: f64, seed: u64, target_workloads: usize) -> ChurnOptions {
        ChurnOptions {
            changes_per_sec,
            tick: Duration::from_millis(10),
            seed,
            target_workloads,
        }
    }
}

/// Counters, readable while churn runs.
#[derive(Debug, Default)]
pub struct ChurnStats {
    /// Changes applied (one pod restart = one change).
    pub changes: AtomicU64,
    /// Resources upserted / removed in the view.
    pub upserts: AtomicU64,
    pub removals: AtomicU64,
    /// Batches published (non-empty `View::apply` calls).
    pub batches: AtomicU64,
}

impl ChurnStats {
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }
}

/// One published batch: what changed and when it became visible in the view.
#[derive(Debug, Clone)]
pub struct ChangeBatch {
    /// Taken right after `View::apply` returned (the change is visible to readers).
    pub published_at: Instant,
    /// View version after the batch (`None` if the batch changed nothing).
    pub view_version: Option<u64>,
    pub kinds: Vec<ChangeKind>,
    pub upserted: Vec<Arc<str>>,
    pub removed: Vec<Arc<str>>,
}

/// Called after every published batch (from the churn task; keep it quick).
pub type ChangeObserver = Arc<dyn Fn(&ChangeBatch) + Send + Sync>;

/// Drives changes into a view.
pub struct Churn {
    population: Population,
    view: Arc<View>,
    options: ChurnOptions,
    rng: StdRng,
    stats: Arc<ChurnStats>,
    observer: Option<ChangeObserver>,
}

impl fmt::Debug for Churn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Churn")
            .field("options", &self.options)
            .field("workloads", &self.population.workload_count())
            .finish_non_exhaustive()
    }
}

impl Churn {
    pub fn new(population: Population, view: Arc<View>, options: ChurnOptions) -> Churn {
        Churn {
            rng: StdRng::seed_from_u64(options.seed),
            population,
            view,
            options,
            stats: Arc::new(ChurnStats::default()),
            observer: None,
        }
    }

    pub fn with_observer(mut self, observer: ChangeObserver) -> Churn {
        self.observer = Some(observer);
        self
    }

    pub fn stats(&self) -> Arc<ChurnStats> {
        Arc::clone(&self.stats)
    }

    pub fn population(&self) -> &Population {
        &self.population
    }

    /// Applies `count` changes as one batch (one `View::apply`) and returns it.
    pub fn step(&mut self, count: usize) -> Result<ChangeBatch, PopulationError> {
        // Net effect per name within the batch: the last write wins, so a pod added and
        // restarted in one batch is never both removed and upserted.
        let mut net: BTreeMap<Arc<str>, Option<Arc<Resource>>> = BTreeMap::new();
        let mut kinds = Vec::with_capacity(count);
        for _ in 0..count {
            let kind = self.next_kind();
            let m = self.mutate(kind)?;
            for name in m.removals {
                net.insert(name, None);
            }
            for r in m.upserts {
                net.insert(Arc::clone(&r.name), Some(r));
            }
            kinds.push(kind);
        }
        let mut upserts = Vec::new();
        let mut removed = Vec::new();
        for (name, r) in net {
            match r {
                Some(r) => upserts.push(r),
                None => removed.push(name),
            }
        }
        let upserted: Vec<Arc<str>> = upserts.iter().map(|r| Arc::clone(&r.name)).collect();
        let change = self
            .view
            .apply(ResourceType::Address, upserts, removed.iter().cloned());
        let batch = ChangeBatch {
            published_at: Instant::now(),
            view_version: change.as_ref().map(|c| c.version),
            kinds,
            upserted,
            removed,
        };
        self.stats
            .changes
            .fetch_add(batch.kinds.len() as u64, Ordering::Relaxed);
        self.stats
            .upserts
            .fetch_add(batch.upserted.len() as u64, Ordering::Relaxed);
        self.stats
            .removals
            .fetch_add(batch.removed.len() as u64, Ordering::Relaxed);
        if change.is_some() {
            self.stats.batches.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(observer) = &self.observer {
            observer(&batch);
        }
        Ok(batch)
    }

    fn next_kind(&mut self) -> ChangeKind {
        let target = self.options.target_workloads;
        let size = self.population.workload_count();
        // Let the size wander within ±1% (at least ±1) of the target, then pull it back.
        let band = (target / 100).max(1);
        match self.rng.random_range(0..100u32) {
            0..=59 => ChangeKind::PodRestart,
            60..=79 => ChangeKind::StatusFlip,
            80..=97 => {
                if size + band <= target {
                    ChangeKind::ScaleUp
                } else if size >= target + band {
                    ChangeKind::ScaleDown
                } else if self.rng.random_bool(0.5) {
                    ChangeKind::ScaleUp
                } else {
                    ChangeKind::ScaleDown
                }
            }
            _ => ChangeKind::ServicePortChange,
        }
    }

    fn mutate(&mut self, kind: ChangeKind) -> Result<Mutation, PopulationError> {
        let rng = &mut self.rng;
        match kind {
            ChangeKind::PodRestart => self.population.restart_pod(rng),
            ChangeKind::StatusFlip => self.population.flip_status(rng),
            ChangeKind::ScaleUp => self.population.scale_up(rng),
            ChangeKind::ScaleDown => Ok(self.population.scale_down(rng)),
            ChangeKind::ServicePortChange => self.population.change_service_port(rng),
        }
    }

    /// Applies changes at the configured rate until `shutdown` turns true (or its sender
    /// is dropped); returns itself so the caller can inspect the final population.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) -> Churn {
        let rate = self.options.changes_per_sec;
        if !(rate > 0.0 && rate.is_finite()) {
            let _ = shutdown.wait_for(|stop| *stop).await;
            return self;
        }
        let tick = self.options.tick.max(Duration::from_millis(1));
        // After a stall, catch up at most one second's worth in a single batch.
        let max_batch = (rate.ceil() as usize).max(1);
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let start = Instant::now();
        let mut applied: u64 = 0;
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return self;
                    }
                    continue;
                }
            }
            if *shutdown.borrow() {
                return self;
            }
            let due = (start.elapsed().as_secs_f64() * rate) as u64;
            let count = due.saturating_sub(applied).min(max_batch as u64) as usize;
            if due.saturating_sub(applied) > max_batch as u64 {
                // Drop the backlog instead of bursting: the rate is a target, not a debt.
                applied = due - max_batch as u64;
            }
            if count == 0 {
                continue;
            }
            applied += count as u64;
            if let Err(e) = self.step(count) {
                tracing::error!(error = %e, "simulated churn produced an invalid resource; stopping churn");
                return self;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::sim::population::PopulationOptions;

    fn setup(workloads: usize, seed: u64) -> (Churn, Arc<View>) {
        let p =
            Population::generate(&PopulationOptions::new("c1", 1, workloads, 20, seed)).unwrap();
        let view = View::new("sim");
        view.apply(ResourceType::Address, p.address_resources().unwrap(), []);
        let churn = Churn::new(p, view.clone(), ChurnOptions::new(100.0, seed, workloads));
        (churn, view)
    }

    fn workloads_in(view: &View) -> usize {
        view.snapshot().counts().0
    }

    #[test]
    fn steps_keep_size_near_target_and_remove_things() {
        let (mut churn, view) = setup(200, 4);
        let mut removed = 0;
        let mut kinds = std::collections::HashSet::new();
        for _ in 0..300 {
            let batch = churn.step(5).unwrap();
            removed += batch.removed.len();
            kinds.extend(batch.kinds);
            let n = workloads_in(&view);
            assert!((198..=202).contains(&n), "size {n} drifted from 200");
            assert_eq!(
                n,
                churn.population().workload_count(),
                "view matches the model"
            );
        }
        assert!(removed > 0, "churn produces removals");
        assert!(kinds.contains(&ChangeKind::PodRestart));
        assert!(kinds.contains(&ChangeKind::StatusFlip));
        assert!(kinds.contains(&ChangeKind::ScaleUp) || kinds.contains(&ChangeKind::ScaleDown));
        assert_eq!(churn.stats().changes(), 1500);
        // Every resource in the view still validates.
        for r in view.snapshot().resources(ResourceType::Address).values() {
            Resource::from_wire(r.kind, &*r.name, &*r.version, r.body.clone()).unwrap();
        }
    }

    #[test]
    fn same_seed_same_change_sequence() {
        let run = |seed| {
            let (mut churn, view) = setup(100, seed);
            for _ in 0..50 {
                churn.step(3).unwrap();
            }
            view.snapshot()
                .resources(ResourceType::Address)
                .iter()
                .map(|(n, r)| (n.clone(), r.body.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(11), run(11));
        assert_ne!(run(11), run(12));
    }

    #[test]
    fn a_batch_is_one_view_version_and_observers_see_it() {
        let (churn, view) = setup(50, 2);
        let seen: Arc<Mutex<Vec<ChangeBatch>>> = Arc::default();
        let sink = seen.clone();
        let mut churn = churn.with_observer(Arc::new(move |b: &ChangeBatch| {
            sink.lock().unwrap().push(b.clone());
        }));
        let before = view.snapshot().version;
        let batch = churn.step(10).unwrap();
        assert_eq!(batch.view_version, Some(before + 1));
        assert_eq!(view.snapshot().version, before + 1);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].kinds.len(), 10);
        // Names removed are gone, names upserted are present.
        let snap = view.snapshot();
        for n in &seen[0].removed {
            assert!(snap.get(ResourceType::Address, n).is_none());
        }
        for n in &seen[0].upserted {
            assert!(snap.get(ResourceType::Address, n).is_some());
        }
    }

    #[tokio::test]
    async fn run_applies_changes_until_shutdown() {
        let (churn, view) = setup(100, 3);
        let stats = churn.stats();
        let mut changes = view.subscribe();
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(churn.run(shutdown));
        // Wait (generously) for published changes, then stop.
        tokio::time::timeout(Duration::from_secs(30), async {
            while stats.changes() < 20 {
                let _ = changes.recv().await;
            }
        })
        .await
        .unwrap();
        stop.send(true).unwrap();
        let churn = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap()
            .unwrap();
        let after_stop = stats.changes();
        assert!(after_stop >= 20);
        assert_eq!(churn.population().workload_count(), workloads_in(&view));
        // Stopped: no more changes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(stats.changes(), after_stop);
    }
}
