//! Logs and traces of the `ovc` process: the `tracing` subscriber (text or JSON lines on
//! stderr, filtered by `OVC_LOG`) and, for the long-running commands (`ovc serve`,
//! `ovc worker`, `ovc dev`), the OpenTelemetry layer whose spans (a request, an
//! operation run, a step attempt; see docs/architecture.md "Tracing") are exported over
//! OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set.
//!
//! The OpenTelemetry layer is installed even when nothing is exported, so every request
//! span has a trace context that the API stores with its command and the workers
//! continue; JSON log lines carry its `trace_id` and `span_id` either way.
//!
//! The standard `OTEL_*` variables are read by the SDK; the ones it would ignore or that
//! this build cannot honour (another protocol, compression, TLS files, metrics or logs
//! exporters, unknown names) are refused at start-up by [`check_otel_env`], never
//! silently ignored.

use opentelemetry::KeyValue;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::resource::{
    EnvResourceDetector, Resource, ResourceDetector, TelemetryResourceDetector,
};
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::BTreeMap;
use tracing::field::{Field, Visit};
use tracing::{Level, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines are written on stderr (`--log-format`, `OVC_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (tracing's default format).
    Text,
    /// One JSON object per line: timestamp, level, target, message, fields, and the
    /// trace_id/span_id of the span it was logged in.
    Json,
}

/// Why telemetry cannot start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// An `OTEL_*` variable this build cannot honour.
    #[error("{var}={value:?}: {why}")]
    Unsupported {
        /// The variable.
        var: String,
        /// Its value.
        value: String,
        /// What ovc supports instead.
        why: String,
    },
    /// `OVC_LOG` is not a valid filter.
    #[error("OVC_LOG={value:?} is not a valid log filter: {error}")]
    LogFilter {
        /// Its value.
        value: String,
        /// The parser's complaint.
        error: String,
    },
    /// The OTLP exporter refused its configuration (endpoint, headers, ...).
    #[error("OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// The subscriber could not be installed.
    #[error("cannot install the log subscriber: {0}")]
    Install(String),
}

/// What `OTEL_*` asks of this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Export {
    /// No exporter: spans have contexts (so traces propagate) but go nowhere.
    Off,
    /// OTLP over gRPC (endpoint and the rest from the standard variables).
    Otlp,
}

/// Numbers the SDK reads (and would silently ignore when malformed).
const NUMERIC: &[&str] = &[
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_BSP_SCHEDULE_DELAY",
    "OTEL_BSP_MAX_QUEUE_SIZE",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
    "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_SPAN_EVENT_COUNT_LIMIT",
    "OTEL_SPAN_LINK_COUNT_LIMIT",
];

/// Free-form values the SDK reads (and rejects itself when malformed, at build).
const FREE_FORM: &[&str] = &[
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
];

const SAMPLERS: &[&str] = &[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
];

/// Checks every `OTEL_*` variable of `vars` (name, value; empty values count as unset,
/// as the specification says) and decides whether spans are exported. Anything this
/// build would not honour is an error naming the variable.
pub fn check_otel_env(vars: &[(String, String)]) -> Result<Export, TelemetryError> {
    let set: BTreeMap<&str, &str> = vars
        .iter()
        .filter(|(k, v)| k.starts_with("OTEL_") && !v.trim().is_empty())
        .map(|(k, v)| (k.as_str(), v.trim()))
        .collect();
    let refuse = |var: &str, value: &str, why: &str| TelemetryError::Unsupported {
        var: var.to_string(),
        value: value.to_string(),
        why: why.to_string(),
    };
    for (&var, &value) in &set {
        let lower = value.to_ascii_lowercase();
        match var {
            v if FREE_FORM.contains(&v) => {}
            v if NUMERIC.contains(&v) => {
                if value.parse::<u64>().is_err() {
                    return Err(refuse(var, value, "expected a whole number"));
                }
            }
            "OTEL_EXPORTER_OTLP_PROTOCOL" | "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL" => {
                if lower != "grpc" {
                    return Err(refuse(
                        var,
                        value,
                        "ovc exports OTLP over gRPC only; use grpc (port 4317 of a collector)",
                    ));
                }
            }
            "OTEL_EXPORTER_OTLP_COMPRESSION" | "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION" => {
                if lower != "none" {
                    return Err(refuse(
                        var,
                        value,
                        "this build does not compress OTLP exports; use none",
                    ));
                }
            }
            "OTEL_EXPORTER_OTLP_INSECURE" | "OTEL_EXPORTER_OTLP_TRACES_INSECURE" => {
                if lower != "true" && lower != "false" {
                    return Err(refuse(var, value, "expected true or false"));
                }
            }
            "OTEL_TRACES_SAMPLER" => {
                if !SAMPLERS.contains(&lower.as_str()) {
                    return Err(refuse(
                        var,
                        value,
                        &format!("supported samplers: {}", SAMPLERS.join(", ")),
                    ));
                }
            }
            "OTEL_TRACES_SAMPLER_ARG" => {
                if !value.parse::<f64>().is_ok_and(|r| (0.0..=1.0).contains(&r)) {
                    return Err(refuse(var, value, "expected a ratio from 0 to 1"));
                }
            }
            "OTEL_TRACES_EXPORTER" => {
                if lower != "otlp" && lower != "none" {
                    return Err(refuse(var, value, "ovc exports traces with otlp (or none)"));
                }
            }
            "OTEL_METRICS_EXPORTER" | "OTEL_LOGS_EXPORTER" => {
                if lower != "none" {
                    return Err(refuse(
                        var,
                        value,
                        "ovc exports traces only (metrics: GET /metrics; logs: stderr); use none",
                    ));
                }
            }
            "OTEL_PROPAGATORS" => {
                if lower.split(',').any(|p| p.trim() != "tracecontext") {
                    return Err(refuse(var, value, "ovc propagates W3C tracecontext only"));
                }
            }
            "OTEL_SDK_DISABLED" => {
                if lower != "true" && lower != "false" {
                    return Err(refuse(var, value, "expected true or false"));
                }
            }
            _ => {
                return Err(refuse(
                    var,
                    value,
                    "not supported by ovc (it exports traces over OTLP/gRPC without TLS; see \
                     `ovc serve --help`); unset it",
                ));
            }
        }
    }
    let sampler_needs_arg = set
        .get("OTEL_TRACES_SAMPLER")
        .is_some_and(|s| s.to_ascii_lowercase().ends_with("traceidratio"));
    if let Some(arg) = set.get("OTEL_TRACES_SAMPLER_ARG")
        && !sampler_needs_arg
    {
        return Err(refuse(
            "OTEL_TRACES_SAMPLER_ARG",
            arg,
            "only a traceidratio sampler takes an argument (set OTEL_TRACES_SAMPLER)",
        ));
    }
    let disabled = set
        .get("OTEL_SDK_DISABLED")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let exporter = set
        .get("OTEL_TRACES_EXPORTER")
        .map(|v| v.to_ascii_lowercase());
    let endpoint = set.contains_key("OTEL_EXPORTER_OTLP_ENDPOINT")
        || set.contains_key("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    Ok(
        match (
            disabled,
            exporter.as_deref(),
            endpoint || exporter.as_deref() == Some("otlp"),
        ) {
            (true, _, _) | (_, Some("none"), _) | (_, _, false) => Export::Off,
            _ => Export::Otlp,
        },
    )
}

/// The installed telemetry; [`Telemetry::shutdown`] exports what is left.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
    exporting: bool,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter (call at exit; a process
    /// killed with SIGKILL loses the spans of its last batch interval).
    pub async fn shutdown(self) {
        let provider = self.provider;
        let exporting = self.exporting;
        // Blocking: the batch processor's thread exports through tonic, on this runtime.
        let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        if exporting && let Ok(Err(e)) = done {
            eprintln!("ovc: exporting the last spans failed: {e}");
        }
    }
}

/// The resource of this process's spans: `service.name` (`ovc` unless
/// `OTEL_SERVICE_NAME` or `OTEL_RESOURCE_ATTRIBUTES` say otherwise), a
/// `service.instance.id` unique to the process, `process.pid`, `host.name` and the
/// command (`ovc.command`).
fn resource(command: &str) -> Resource {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let pid = std::process::id();
    let instance = format!(
        "{host}-{pid}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    // Later sources win: OTEL_RESOURCE_ATTRIBUTES over these defaults, OTEL_SERVICE_NAME
    // over both.
    let detectors: [Box<dyn ResourceDetector>; 2] = [
        Box::new(TelemetryResourceDetector),
        Box::new(EnvResourceDetector::new()),
    ];
    let builder = Resource::builder_empty()
        .with_attributes([
            KeyValue::new("service.name", "ovc"),
            KeyValue::new("service.instance.id", instance),
            KeyValue::new("process.pid", i64::from(pid)),
            KeyValue::new("host.name", host),
            KeyValue::new("ovc.command", command.to_string()),
        ])
        .with_detectors(&detectors);
    match std::env::var("OTEL_SERVICE_NAME") {
        Ok(name) if !name.trim().is_empty() => builder.with_service_name(name.trim().to_string()),
        _ => builder,
    }
    .build()
}

/// The `OVC_LOG` filter (default `warn`); a malformed one is an error.
fn log_filter() -> Result<tracing_subscriber::EnvFilter, TelemetryError> {
    match std::env::var("OVC_LOG") {
        Ok(value) if !value.trim().is_empty() => tracing_subscriber::EnvFilter::try_new(&value)
            .map_err(|e| TelemetryError::LogFilter {
                value,
                error: e.to_string(),
            }),
        _ => Ok(tracing_subscriber::EnvFilter::new("warn")),
    }
}

/// ovc's own spans at INFO and above: the request, operation and step spans (and the
/// drivers'), which exist whatever `OVC_LOG` says so that traces are whole.
fn ovc_span(meta: &tracing::Metadata<'_>) -> bool {
    meta.is_span() && meta.target().starts_with("ovc") && *meta.level() <= Level::INFO
}

/// Which spans and events reach OpenTelemetry: ovc's spans, and warnings and errors (as
/// events of the span they happen in) that `OVC_LOG` lets through.
fn otel_filter(meta: &tracing::Metadata<'_>) -> bool {
    ovc_span(meta)
        || (meta.is_event()
            && *meta.level() <= Level::WARN
            && !meta.target().starts_with("opentelemetry"))
}

/// The process-wide filter: `OVC_LOG`, plus [`ovc_span`]s. It is one global filter
/// rather than a per-layer filter on the log layer: with `OVC_LOG` as a per-layer
/// filter, spans that both the log layer and the OpenTelemetry layer enabled reached
/// OpenTelemetry without their parents (measured in tests/tests/tracing.rs). The log
/// layer shows ovc's spans as the context of its lines.
struct ProcessFilter {
    log: tracing_subscriber::EnvFilter,
}

impl<S> Layer<S> for ProcessFilter
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn register_callsite(
        &self,
        meta: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        if ovc_span(meta) {
            tracing::subscriber::Interest::always()
        } else {
            Layer::<S>::register_callsite(&self.log, meta)
        }
    }

    fn enabled(
        &self,
        meta: &tracing::Metadata<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        ovc_span(meta) || Layer::<S>::enabled(&self.log, meta, ctx)
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Layer::<S>::max_level_hint(&self.log)
            .map(|l| l.max(tracing::level_filters::LevelFilter::INFO))
    }

    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        Layer::<S>::on_new_span(&self.log, attrs, id, ctx)
    }

    fn on_record(
        &self,
        id: &tracing::span::Id,
        values: &tracing::span::Record<'_>,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        Layer::<S>::on_record(&self.log, id, values, ctx)
    }

    fn on_enter(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        Layer::<S>::on_enter(&self.log, id, ctx)
    }

    fn on_exit(&self, id: &tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        Layer::<S>::on_exit(&self.log, id, ctx)
    }

    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        Layer::<S>::on_close(&self.log, id, ctx)
    }
}

/// Installs the subscriber: logs in `format` on stderr and, with `command` (the
/// long-running commands), spans exported as `OTEL_*` says (checked first).
pub fn init(format: LogFormat, command: Option<&str>) -> Result<Telemetry, TelemetryError> {
    let export = match command {
        Some(_) => check_otel_env(&std::env::vars().collect::<Vec<_>>())?,
        None => Export::Off,
    };
    let mut provider =
        SdkTracerProvider::builder().with_resource(resource(command.unwrap_or("cli")));
    if export == Export::Otlp {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()?;
        provider = provider.with_batch_exporter(exporter);
    }
    let provider = provider.build();
    let tracer = provider.tracer("ovc");
    // Parents come from tracing's own span stack; no other OpenTelemetry instrumentation
    // runs in ovc that would need OpenTelemetry's thread-local "active context".
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_context_activation(false)
        .with_filter(tracing_subscriber::filter::filter_fn(otel_filter));
    let filter = ProcessFilter { log: log_filter()? };
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .event_format(JsonLines)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(otel)
        .try_init()
        .map_err(|e| TelemetryError::Install(e.to_string()))?;
    Ok(Telemetry {
        provider,
        exporting: export == Export::Otlp,
    })
}

/// `--log-format json`: one JSON object per event.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let meta = event.metadata();
        let mut fields = FieldsJson::default();
        event.record(&mut fields);
        let mut line = serde_json::Map::new();
        line.insert(
            "timestamp".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        line.insert("level".into(), meta.level().as_str().into());
        line.insert("target".into(), meta.target().into());
        if let Some(message) = fields.0.remove("message") {
            line.insert("message".into(), message);
        }
        if !fields.0.is_empty() {
            line.insert("fields".into(), serde_json::Value::Object(fields.0));
        }
        // The span names from the root down, as far as this layer sees them.
        if let Some(scope) = ctx.event_scope() {
            let names: Vec<serde_json::Value> =
                scope.from_root().map(|s| s.name().into()).collect();
            line.insert("spans".into(), names.into());
        }
        // The OpenTelemetry context of the span the event happened in (whether or not
        // this layer's filter shows that span).
        let cx = tracing::Span::current().context();
        let span = cx.span();
        let sc = span.span_context();
        if sc.is_valid() {
            line.insert("trace_id".into(), sc.trace_id().to_string().into());
            line.insert("span_id".into(), sc.span_id().to_string().into());
        }
        writeln!(writer, "{}", serde_json::Value::Object(line))
    }
}

/// An event's fields as JSON values.
#[derive(Default)]
struct FieldsJson(serde_json::Map<String, serde_json::Value>);

impl Visit for FieldsJson {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn export_follows_the_endpoint_and_the_switches() {
        assert_eq!(check_otel_env(&vars(&[])).unwrap(), Export::Off);
        assert_eq!(
            check_otel_env(&vars(&[("PATH", "/bin"), ("OVC_LOG", "debug")])).unwrap(),
            Export::Off
        );
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317");
        assert_eq!(check_otel_env(&vars(&[endpoint])).unwrap(), Export::Otlp);
        assert_eq!(
            check_otel_env(&vars(&[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://collector:4317"
            )]))
            .unwrap(),
            Export::Otlp
        );
        assert_eq!(
            check_otel_env(&vars(&[endpoint, ("OTEL_SDK_DISABLED", "true")])).unwrap(),
            Export::Off
        );
        assert_eq!(
            check_otel_env(&vars(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")])).unwrap(),
            Export::Off
        );
        // An empty value is unset.
        assert_eq!(
            check_otel_env(&vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])).unwrap(),
            Export::Off
        );
        assert_eq!(
            check_otel_env(&vars(&[
                endpoint,
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_SERVICE_NAME", "ovc-eu"),
                ("OTEL_BSP_SCHEDULE_DELAY", "100"),
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
                ("OTEL_PROPAGATORS", "tracecontext"),
                ("OTEL_METRICS_EXPORTER", "none"),
            ]))
            .unwrap(),
            Export::Otlp
        );
    }

    #[test]
    fn settings_ovc_cannot_honour_are_refused_by_name() {
        for (var, value) in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://c:4317"),
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_LOGS_EXPORTER", "otlp"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
            ("OTEL_TRACES_SAMPLER", "jaeger_remote"),
            ("OTEL_PROPAGATORS", "tracecontext,baggage"),
            ("OTEL_BSP_SCHEDULE_DELAY", "soon"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "1000"),
            ("OTEL_SDK_DISABLED", "yes"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
        ] {
            let err = check_otel_env(&vars(&[(var, value)]))
                .expect_err(&format!("{var}={value} must be refused"))
                .to_string();
            assert!(err.starts_with(&format!("{var}=")), "{err}");
        }
        let err = check_otel_env(&vars(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(err.contains("OTEL_TRACES_SAMPLER_ARG"), "{err}");
    }
}
