//! The metrics ABI (proxy-wasm-abi.md §14) and the registry the proxy reads them from.
//!
//! A metric is identified by (plugin name, metric name): every worker's VM of a filter that defines
//! `requests` updates the same value, as Envoy's stats do. Ids are per VM and encode the type in the
//! low 2 bits (counters 4, 8…; gauges 5, 9…; histograms 6, 10…); every define returns a new id.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use dashmap::DashMap;
use wasmtime::{Caller, Linker};

use crate::memory;
use crate::state::HostState;
use crate::types::{MetricType, Status};

/// One metric's live value.
#[derive(Debug)]
pub struct Metric {
    kind: MetricType,
    /// Counter value (u64 stored as i64 bits) or gauge value.
    value: AtomicI64,
    /// Histogram: number of samples.
    count: AtomicU64,
    /// Histogram: sum of samples.
    sum: AtomicU64,
}

impl Metric {
    fn new(kind: MetricType) -> Self {
        Self {
            kind,
            value: AtomicI64::new(0),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }

    /// Its current value.
    pub fn value(&self) -> MetricValue {
        match self.kind {
            MetricType::Counter => MetricValue::Counter(self.value.load(Relaxed) as u64),
            MetricType::Gauge => MetricValue::Gauge(self.value.load(Relaxed)),
            MetricType::Histogram => MetricValue::Histogram {
                count: self.count.load(Relaxed),
                sum: self.sum.load(Relaxed),
            },
        }
    }
}

/// A metric value as exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricValue {
    /// Counter total.
    Counter(u64),
    /// Gauge value.
    Gauge(i64),
    /// Histogram summary.
    Histogram {
        /// Samples recorded.
        count: u64,
        /// Sum of samples (wrapping).
        sum: u64,
    },
}

/// One exported sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricSample {
    /// The plugin (filter) that defined it.
    pub plugin: String,
    /// The metric name the guest chose.
    pub name: String,
    /// The value.
    pub value: MetricValue,
}

/// All guest-defined metrics of a runtime, keyed by (plugin, name, type).
#[derive(Debug, Default, Clone)]
pub struct MetricsRegistry {
    metrics: Arc<DashMap<(String, String, u8), Arc<Metric>>>,
}

impl MetricsRegistry {
    /// A fresh registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn define(&self, plugin: &str, name: &str, kind: MetricType) -> Arc<Metric> {
        self.metrics
            .entry((plugin.to_owned(), name.to_owned(), kind as u8))
            .or_insert_with(|| Arc::new(Metric::new(kind)))
            .clone()
    }

    /// Every metric, sorted by plugin then name.
    pub fn snapshot(&self) -> Vec<MetricSample> {
        let mut out: Vec<MetricSample> = self
            .metrics
            .iter()
            .map(|e| MetricSample {
                plugin: e.key().0.clone(),
                name: e.key().1.clone(),
                value: e.value().value(),
            })
            .collect();
        out.sort_by(|a, b| (&a.plugin, &a.name).cmp(&(&b.plugin, &b.name)));
        out
    }

    /// One metric's value.
    pub fn get(&self, plugin: &str, name: &str) -> Option<MetricValue> {
        self.metrics
            .iter()
            .find(|e| e.key().0 == plugin && e.key().1 == name)
            .map(|e| e.value().value())
    }
}

/// A VM's id → metric table.
#[derive(Debug)]
pub(crate) struct VmMetrics {
    registry: MetricsRegistry,
    by_index: Vec<Arc<Metric>>,
}

impl VmMetrics {
    pub(crate) fn new(registry: MetricsRegistry) -> Self {
        Self {
            registry,
            by_index: Vec::new(),
        }
    }

    pub(crate) fn define(&mut self, plugin: &str, name: &str, kind: MetricType) -> Option<u32> {
        let n = u32::try_from(self.by_index.len() + 1)
            .ok()
            .filter(|n| *n <= u32::MAX >> 2)?;
        self.by_index.push(self.registry.define(plugin, name, kind));
        Some((n << 2) | kind as u32)
    }

    fn lookup(&self, id: u32) -> Option<&Metric> {
        let n = (id >> 2) as usize;
        let m = self.by_index.get(n.checked_sub(1)?)?;
        (m.kind as u32 == (id & 3)).then_some(&**m)
    }

    pub(crate) fn get(&self, id: u32) -> Result<u64, Status> {
        let m = self.lookup(id).ok_or(Status::NotFound)?;
        match m.kind {
            MetricType::Counter | MetricType::Gauge => Ok(m.value.load(Relaxed) as u64),
            MetricType::Histogram => Err(Status::BadArgument),
        }
    }

    pub(crate) fn record(&self, id: u32, v: u64) -> Result<(), Status> {
        let m = self.lookup(id).ok_or(Status::NotFound)?;
        match m.kind {
            // Envoy: record on a counter adds.
            MetricType::Counter => {
                m.value.fetch_add(v as i64, Relaxed);
            }
            MetricType::Gauge => m.value.store(v as i64, Relaxed),
            MetricType::Histogram => {
                m.count.fetch_add(1, Relaxed);
                m.sum.fetch_add(v, Relaxed);
            }
        }
        Ok(())
    }

    pub(crate) fn increment(&self, id: u32, delta: i64) -> Result<(), Status> {
        let m = self.lookup(id).ok_or(Status::NotFound)?;
        match m.kind {
            MetricType::Counter if delta > 0 => {
                m.value.fetch_add(delta, Relaxed);
                Ok(())
            }
            MetricType::Gauge => {
                m.value.fetch_add(delta, Relaxed);
                Ok(())
            }
            _ => Err(Status::BadArgument),
        }
    }
}

pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut caller: Caller<'_, HostState>,
         kind: u32,
         np: u32,
         nl: u32,
         idp: u32|
         -> wasmtime::Result<i32> {
            const F: &str = "proxy_define_metric";
            memory::not_in_allocator(&caller, F)?;
            memory::check_out(&mut caller, F, &[idp])?;
            let Some(kind) = MetricType::from_raw(kind) else {
                return Ok(Status::BadArgument.raw());
            };
            let name = memory::read(&mut caller, F, np, nl, 64 << 10)?;
            let name = String::from_utf8_lossy(&name).into_owned();
            let st = caller.data_mut();
            let plugin = st.plugin.clone();
            let Some(id) = st.metrics.define(&plugin.name, &name, kind) else {
                return Ok(Status::InternalFailure.raw());
            };
            memory::write_u32(&mut caller, F, idp, id)?;
            Ok(Status::Ok.raw())
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_metric",
        |mut caller: Caller<'_, HostState>, id: u32, vp: u32| -> wasmtime::Result<i32> {
            const F: &str = "proxy_get_metric";
            memory::not_in_allocator(&caller, F)?;
            memory::check_out(&mut caller, F, &[vp])?;
            match caller.data().metrics.get(id) {
                Ok(v) => {
                    memory::write_u64(&mut caller, F, vp, v)?;
                    Ok(Status::Ok.raw())
                }
                Err(s) => Ok(s.raw()),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |caller: Caller<'_, HostState>, id: u32, v: i64| -> wasmtime::Result<i32> {
            memory::not_in_allocator(&caller, "proxy_record_metric")?;
            Ok(Status::code(caller.data().metrics.record(id, v as u64)))
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |caller: Caller<'_, HostState>, id: u32, d: i64| -> wasmtime::Result<i32> {
            memory::not_in_allocator(&caller, "proxy_increment_metric")?;
            Ok(Status::code(caller.data().metrics.increment(id, d)))
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_encode_type_and_values_follow_envoy() {
        let reg = MetricsRegistry::new();
        let mut vm = VmMetrics::new(reg.clone());
        let c = vm.define("p", "reqs", MetricType::Counter).unwrap();
        let g = vm.define("p", "active", MetricType::Gauge).unwrap();
        let h = vm.define("p", "lat", MetricType::Histogram).unwrap();
        assert_eq!((c & 3, g & 3, h & 3), (0, 1, 2));
        assert_eq!(c, 4);
        let c_again = vm.define("p", "reqs", MetricType::Counter).unwrap();
        assert_ne!(c, c_again, "every define returns a new id");

        assert_eq!(vm.increment(c, 0), Err(Status::BadArgument));
        assert_eq!(vm.increment(c, -1), Err(Status::BadArgument));
        vm.increment(c, 2).unwrap();
        vm.record(c_again, 3).unwrap(); // adds, and the same name shares the value
        assert_eq!(vm.get(c), Ok(5));

        vm.record(g, 10).unwrap();
        vm.increment(g, -3).unwrap();
        assert_eq!(vm.get(g), Ok(7));

        vm.record(h, 100).unwrap();
        vm.record(h, 50).unwrap();
        assert_eq!(vm.get(h), Err(Status::BadArgument));
        assert_eq!(vm.increment(h, 1), Err(Status::BadArgument));

        assert_eq!(vm.get(999), Err(Status::NotFound));
        assert_eq!(vm.get(c | 1), Err(Status::NotFound), "type bits must match");
        assert_eq!(vm.record(0, 1), Err(Status::NotFound));

        // a second VM of the same plugin shares values
        let mut vm2 = VmMetrics::new(reg.clone());
        let c2 = vm2.define("p", "reqs", MetricType::Counter).unwrap();
        vm2.increment(c2, 1).unwrap();
        assert_eq!(reg.get("p", "reqs"), Some(MetricValue::Counter(6)));
        assert_eq!(
            reg.get("p", "lat"),
            Some(MetricValue::Histogram { count: 2, sum: 150 })
        );
        assert_eq!(reg.snapshot().len(), 3);
    }
}
