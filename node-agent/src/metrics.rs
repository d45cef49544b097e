//! Prometheus metrics of the agent. Counters and histograms live here and are updated by the
//! programming loop; the registry is encoded at every scrape of `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClusterLabels {
    /// The backend's cluster; the local cluster's name for local backends.
    pub cluster: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug)]
pub struct Metrics {
    pub ready: Gauge,
    pub services_programmed: Gauge,
    pub backends_programmed: Family<ClusterLabels, Gauge>,
    pub mesh_vips: Gauge,
    pub passes: Counter,
    pub pass_duration: Histogram,
    pub propagation_lag: Histogram,
    pub map_errors: Counter,
    pub validation_failures: Family<ReasonLabels, Counter>,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            ready: Gauge::default(),
            services_programmed: Gauge::default(),
            backends_programmed: Family::default(),
            mesh_vips: Gauge::default(),
            passes: Counter::default(),
            pass_duration: Histogram::new([
                0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
            ]),
            propagation_lag: Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            map_errors: Counter::default(),
            validation_failures: Family::default(),
        };
        registry.register(
            "ready",
            "1 once the first full sync is in and the datapath is programmed",
            metrics.ready.clone(),
        );
        registry.register(
            "services_programmed",
            "service frontends in the eBPF services map",
            metrics.services_programmed.clone(),
        );
        registry.register(
            "backends_programmed",
            "active backends programmed, by the cluster that runs them",
            metrics.backends_programmed.clone(),
        );
        registry.register(
            "mesh_vips",
            "mesh virtual IPs allocated for remote backends",
            metrics.mesh_vips.clone(),
        );
        registry.register(
            "programming_passes",
            "programming passes run",
            metrics.passes.clone(),
        );
        registry.register(
            "programming_pass_duration_seconds",
            "how long the map programming of one pass (diff, mesh VIPs, map writes) took",
            metrics.pass_duration.clone(),
        );
        registry.register(
            "propagation_lag_seconds",
            "from a service change in its cluster (the publishing apiserver's stamp) to the end of \
             the pass that programmed it; across clusters this includes their clock difference",
            metrics.propagation_lag.clone(),
        );
        registry.register(
            "map_errors",
            "eBPF map writes or mesh VIP allocations that failed (the pass retries them)",
            metrics.map_errors.clone(),
        );
        registry.register(
            "validation_failures",
            "values in the local etcd refused by strict decoding, by reason",
            metrics.validation_failures.clone(),
        );
        metrics
    }
}
