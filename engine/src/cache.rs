//! The engine's caches for multi-turn work (chains, docs/chains.md): text embeddings keyed by the
//! SHA-256 of the prompt, and encoded context latents keyed by the context image's object key
//! and size. Both are LRU and bounded by bytes; a value larger than the whole budget is not kept.
//!
//! Object keys are content-addressed (`in/<tenant>/<sha256>.<ext>`) or attempt-scoped
//! (`out/<tenant>/<job>/<epoch>.png`, never overwritten), so a key always names the same pixels
//! and a cached latent can never be stale. Cached values are the tensors the pipeline computed,
//! so a hit gives exactly the bits a miss would.
//!
//! Hit and miss counters are process-wide (`stats()`): a worker process runs one engine, and its
//! metrics endpoint reads them (`CacheCollector`) without going through the engine thread.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts};
use sha2::{Digest, Sha256};

/// Counters of one cache.
#[derive(Debug, Default)]
pub struct CacheCounters {
    hits: AtomicU64,
    misses: AtomicU64,
    entries: AtomicU64,
    bytes: AtomicU64,
}

/// A snapshot of one cache's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheSnapshot {
    pub hits: u64,
    pub misses: u64,
    pub entries: u64,
    pub bytes: u64,
}

impl CacheSnapshot {
    /// Hits over lookups, `None` before the first lookup.
    pub fn hit_ratio(&self) -> Option<f64> {
        let total = self.hits + self.misses;
        (total > 0).then(|| self.hits as f64 / total as f64)
    }
}

impl CacheCounters {
    pub const fn new() -> Self {
        Self {
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            entries: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    pub fn snapshot(&self) -> CacheSnapshot {
        CacheSnapshot {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: self.entries.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// Text-embedding cache counters of this process.
pub static TEXT: CacheCounters = CacheCounters::new();
/// Context-latent cache counters of this process.
pub static CONTEXT: CacheCounters = CacheCounters::new();
/// The LoRA cache's counters.
pub static LORA: CacheCounters = CacheCounters::new();

/// Both caches' counters, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub text: CacheSnapshot,
    pub context: CacheSnapshot,
    /// Parsed LoRA files on the device (`crate::lora::LoraCache`).
    pub lora: CacheSnapshot,
}

pub fn stats() -> CacheStats {
    CacheStats {
        text: TEXT.snapshot(),
        context: CONTEXT.snapshot(),
        lora: LORA.snapshot(),
    }
}

/// The caches' counters as Prometheus metrics, read from the process-wide counters at each
/// scrape (register it in the worker's registry): `kontext_worker_cache_{hits,misses}_total`,
/// `kontext_worker_cache_{entries,bytes}` and `kontext_worker_cache_hit_ratio`, each labelled
/// `cache="text"|"context"|"lora"`.
#[derive(Debug, Clone)]
pub struct CacheCollector {
    /// The metric definitions; `collect` fills fresh copies, so a scrape never races another.
    families: CacheFamilies,
}

#[derive(Debug, Clone)]
struct CacheFamilies {
    hits: IntCounterVec,
    misses: IntCounterVec,
    entries: IntGaugeVec,
    bytes: IntGaugeVec,
    hit_ratio: GaugeVec,
}

impl CacheFamilies {
    fn new() -> Self {
        let opts = |name: &str, help: &str| Opts::new(name, help);
        let labels = &["cache"];
        // The definitions are static; the unit tests render them.
        let defined = "a static metric definition is valid; this is a bug";
        Self {
            hits: IntCounterVec::new(
                opts(
                    "kontext_worker_cache_hits_total",
                    "Engine cache lookups that hit",
                ),
                labels,
            )
            .expect(defined),
            misses: IntCounterVec::new(
                opts(
                    "kontext_worker_cache_misses_total",
                    "Engine cache lookups that missed",
                ),
                labels,
            )
            .expect(defined),
            entries: IntGaugeVec::new(
                opts(
                    "kontext_worker_cache_entries",
                    "Entries held by the engine cache",
                ),
                labels,
            )
            .expect(defined),
            bytes: IntGaugeVec::new(
                opts(
                    "kontext_worker_cache_bytes",
                    "Bytes held by the engine cache",
                ),
                labels,
            )
            .expect(defined),
            hit_ratio: GaugeVec::new(
                opts(
                    "kontext_worker_cache_hit_ratio",
                    "Hits over lookups since start (0 before any)",
                ),
                labels,
            )
            .expect(defined),
        }
    }
}

impl CacheCollector {
    pub fn new() -> Self {
        Self {
            families: CacheFamilies::new(),
        }
    }
}

impl Default for CacheCollector {
    fn default() -> Self {
        Self::new()
    }
}

/// Prometheus counts in `u64`, as the counters do, and the gauges in `i64`.
fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for CacheCollector {
    fn desc(&self) -> Vec<&Desc> {
        let f = &self.families;
        [
            f.hits.desc(),
            f.misses.desc(),
            f.entries.desc(),
            f.bytes.desc(),
            f.hit_ratio.desc(),
        ]
        .concat()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let f = CacheFamilies::new();
        let s = stats();
        for (label, snap) in [("text", s.text), ("context", s.context), ("lora", s.lora)] {
            f.hits.with_label_values(&[label]).inc_by(snap.hits);
            f.misses.with_label_values(&[label]).inc_by(snap.misses);
            f.entries
                .with_label_values(&[label])
                .set(gauge_value(snap.entries));
            f.bytes
                .with_label_values(&[label])
                .set(gauge_value(snap.bytes));
            f.hit_ratio
                .with_label_values(&[label])
                .set(snap.hit_ratio().unwrap_or(0.0));
        }
        [
            f.hits.collect(),
            f.misses.collect(),
            f.entries.collect(),
            f.bytes.collect(),
            f.hit_ratio.collect(),
        ]
        .concat()
    }
}

/// The text cache's key of a prompt: hex SHA-256 of its UTF-8 bytes.
pub fn prompt_key(prompt: &str) -> String {
    hex::encode(Sha256::digest(prompt.as_bytes()))
}

/// The context cache's key: the image's object key and the size it is resized to.
pub fn context_key(object_key: &str, width: u32, height: u32) -> String {
    format!("{object_key}@{width}x{height}")
}

struct Slot<V> {
    value: V,
    bytes: usize,
    /// Position in `order` (last use).
    tick: u64,
}

/// A least-recently-used map from string keys to values, bounded by the bytes the caller says
/// each value takes. Counts into `counters`.
pub struct ByteLru<V> {
    slots: HashMap<String, Slot<V>>,
    /// tick → key, oldest first.
    order: BTreeMap<u64, String>,
    next_tick: u64,
    used: usize,
    budget: usize,
    counters: &'static CacheCounters,
}

impl<V: Clone> ByteLru<V> {
    /// A cache of at most `budget` bytes (0 disables it: every lookup misses, nothing is kept).
    pub fn new(budget: usize, counters: &'static CacheCounters) -> Self {
        Self {
            slots: HashMap::new(),
            order: BTreeMap::new(),
            next_tick: 0,
            used: 0,
            budget,
            counters,
        }
    }

    /// The value under `key` (a hit makes it the most recently used), counting a hit or a miss.
    pub fn get(&mut self, key: &str) -> Option<V> {
        let Some(slot) = self.slots.get_mut(key) else {
            self.counters.misses.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        self.order.remove(&slot.tick);
        slot.tick = self.next_tick;
        self.next_tick += 1;
        self.order.insert(slot.tick, key.to_owned());
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        Some(slot.value.clone())
    }

    /// Keep `value` (taking `bytes`) under `key`, evicting least recently used entries to fit.
    pub fn insert(&mut self, key: String, value: V, bytes: usize) {
        // The old value goes first, also when the new one is too large to keep: a stale entry
        // must never answer for a key whose value changed.
        if let Some(old) = self.slots.remove(&key) {
            self.order.remove(&old.tick);
            self.used -= old.bytes;
        }
        if bytes > self.budget {
            self.publish();
            return;
        }
        while self.used + bytes > self.budget {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some(old) = self.slots.remove(&oldest) {
                self.used -= old.bytes;
            }
        }
        let tick = self.next_tick;
        self.next_tick += 1;
        self.order.insert(tick, key.clone());
        self.slots.insert(key, Slot { value, bytes, tick });
        self.used += bytes;
        self.publish();
    }

    fn publish(&self) {
        self.counters
            .entries
            .store(self.slots.len() as u64, Ordering::Relaxed);
        self.counters
            .bytes
            .store(self.used as u64, Ordering::Relaxed);
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        self.used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static COUNTERS: CacheCounters = CacheCounters::new();

    #[test]
    fn evicts_least_recently_used_to_stay_within_budget() {
        let mut c = ByteLru::new(100, &COUNTERS);
        c.insert("a".into(), 1, 40);
        c.insert("b".into(), 2, 40);
        assert_eq!(c.get("a"), Some(1), "a is now more recent than b");
        c.insert("c".into(), 3, 40);
        assert_eq!((c.len(), c.used()), (2, 80));
        assert_eq!(c.get("b"), None, "b was the least recently used");
        assert_eq!((c.get("a"), c.get("c")), (Some(1), Some(3)));
        c.insert("huge".into(), 4, 101);
        assert_eq!(c.get("huge"), None, "larger than the budget: not kept");
        c.insert("a".into(), 5, 60);
        assert_eq!((c.get("a"), c.used()), (Some(5), 100), "replaced, resized");
        let s = COUNTERS.snapshot();
        assert_eq!((s.entries, s.bytes), (2, 100));
        // Hits: a, a, c, a; misses: b, huge.
        assert_eq!((s.hits, s.misses), (4, 2), "{s:?}");
    }

    #[test]
    fn a_zero_budget_keeps_nothing() {
        static NONE: CacheCounters = CacheCounters::new();
        let mut c = ByteLru::new(0, &NONE);
        c.insert("a".into(), 1, 1);
        assert_eq!(c.get("a"), None);
        assert!(c.is_empty());
        assert_eq!(NONE.snapshot().hit_ratio(), Some(0.0));
    }

    #[test]
    fn prometheus_lines_name_both_caches() {
        let registry = prometheus::Registry::new();
        registry
            .register(Box::new(CacheCollector::new()))
            .expect("register");
        let out = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("encode");
        for line in [
            "# TYPE kontext_worker_cache_hits_total counter",
            "kontext_worker_cache_hits_total{cache=\"text\"} ",
            "kontext_worker_cache_misses_total{cache=\"context\"} ",
            "kontext_worker_cache_hit_ratio{cache=\"context\"} ",
        ] {
            assert!(out.contains(line), "{line} missing in\n{out}");
        }
    }

    #[test]
    fn keys() {
        assert_eq!(
            prompt_key("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(context_key("out/t/j/1.png", 64, 48), "out/t/j/1.png@64x48");
    }
}
