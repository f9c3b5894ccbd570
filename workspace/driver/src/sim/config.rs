//! The knobs of the simulated host: latency, readiness delay and fault rules, read from
//! the environment (`OVC_SIM_*`) or built directly by tests.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Environment variable: milliseconds slept at the start of every host call.
pub const LATENCY_ENV: &str = "OVC_SIM_LATENCY_MS";
/// Environment variable: milliseconds a scaled control plane needs to become ready.
pub const READY_ENV: &str = "OVC_SIM_READY_MS";
/// Environment variable: the fault rules, see [`FaultRule::parse_list`].
pub const FAULTS_ENV: &str = "OVC_SIM_FAULTS";
/// Environment variable: `1` logs every host call with its lease in `sim_calls` (tests and
/// debugging; it costs one insert per call).
pub const RECORD_CALLS_ENV: &str = "OVC_SIM_RECORD_CALLS";
/// Environment variable: etcd endpoints (`http://HOST:PORT`, `,`-separated) where the
/// simulated vclusters installed from now on keep their backing store, instead of the
/// simulator's database (`ovc dev --sim-etcd`, `ovc worker --sim-etcd`).
pub const ETCD_ENV: &str = "OVC_SIM_ETCD";

/// How the simulated host behaves. `Default` is a fast, faultless host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimConfig {
    /// Slept at the start of every host call ([`LATENCY_ENV`], default 0).
    pub latency: Duration,
    /// How long a control plane takes to have all its pods (and to become ready) after
    /// it was scaled ([`READY_ENV`], default 0).
    pub ready_delay: Duration,
    /// Injected faults ([`FAULTS_ENV`], default none).
    pub faults: Vec<FaultRule>,
    /// Log every call in `sim_calls` ([`RECORD_CALLS_ENV`], default off).
    pub record_calls: bool,
    /// The etcd that new vclusters keep their backing store in ([`ETCD_ENV`]; empty: the
    /// simulator's database).
    pub etcd_endpoints: Vec<String>,
}

/// A bad `OVC_SIM_*` environment variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A millisecond value that is not a whole number.
    #[error("{var}={value:?}: expected a whole number of milliseconds")]
    BadMillis {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// A variable whose value is not UTF-8.
    #[error("{var} is not valid UTF-8")]
    NotUnicode {
        /// The variable.
        var: &'static str,
    },
    /// A switch that is neither `0` nor `1`.
    #[error("{var}={value:?}: expected 0 or 1")]
    BadSwitch {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
    },
    /// An etcd endpoint that is not `http(s)://HOST:PORT` (credentials are not taken in
    /// the URL).
    #[error("{var}: {value:?} is not an etcd endpoint (expected http://HOST:PORT)")]
    BadEndpoint {
        /// The variable.
        var: &'static str,
        /// The entry.
        value: String,
    },
    /// A bad fault rule.
    #[error(transparent)]
    Faults(#[from] FaultParseError),
}

impl SimConfig {
    /// Reads [`LATENCY_ENV`], [`READY_ENV`], [`FAULTS_ENV`] and [`RECORD_CALLS_ENV`];
    /// unset or empty means the default.
    pub fn from_env() -> Result<Self, ConfigError> {
        let mut vars = Vec::new();
        for var in [
            LATENCY_ENV,
            READY_ENV,
            FAULTS_ENV,
            RECORD_CALLS_ENV,
            ETCD_ENV,
        ] {
            match std::env::var(var) {
                Ok(value) => vars.push((var, value)),
                Err(std::env::VarError::NotPresent) => {}
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(ConfigError::NotUnicode { var });
                }
            }
        }
        Self::from_vars(|name| {
            vars.iter()
                .find(|(var, _)| *var == name)
                .map(|(_, value)| value.clone())
        })
    }

    /// Like [`SimConfig::from_env`], reading variables through `get` (for tests, which
    /// must not change the process environment).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let millis = |var: &'static str| -> Result<Duration, ConfigError> {
            match get(var) {
                None => Ok(Duration::ZERO),
                Some(value) if value.trim().is_empty() => Ok(Duration::ZERO),
                Some(value) => value
                    .trim()
                    .parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|_| ConfigError::BadMillis { var, value }),
            }
        };
        Ok(Self {
            latency: millis(LATENCY_ENV)?,
            ready_delay: millis(READY_ENV)?,
            faults: match get(FAULTS_ENV) {
                Some(list) => FaultRule::parse_list(&list)?,
                None => Vec::new(),
            },
            record_calls: match get(RECORD_CALLS_ENV).as_deref().map(str::trim) {
                None | Some("" | "0") => false,
                Some("1") => true,
                Some(other) => {
                    return Err(ConfigError::BadSwitch {
                        var: RECORD_CALLS_ENV,
                        value: other.to_string(),
                    });
                }
            },
            etcd_endpoints: get(ETCD_ENV)
                .map(|list| parse_endpoints(&list))
                .transpose()?
                .unwrap_or_default(),
        })
    }
}

/// Parses a `,`-separated list of etcd endpoints (`http://HOST:PORT`; a bare
/// `HOST:PORT` gets `http://`). Empty entries are skipped.
pub fn parse_endpoints(list: &str) -> Result<Vec<String>, ConfigError> {
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| {
            let url = if e.contains("://") {
                e.to_string()
            } else {
                format!("http://{e}")
            };
            match url.split_once("://") {
                Some(("http" | "https", rest)) if !rest.is_empty() && !rest.contains('@') => {
                    Ok(url)
                }
                _ => Err(ConfigError::BadEndpoint {
                    var: ETCD_ENV,
                    value: e.to_string(),
                }),
            }
        })
        .collect()
}

/// What an injected fault does to the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// Fails with [`crate::DriverError::Transient`]; the engine retries.
    Transient,
    /// Fails with [`crate::DriverError::Permanent`]; the engine compensates.
    Permanent,
    /// Never returns; the engine's step timeout must catch it.
    Hang,
}

impl FaultKind {
    /// The spelling in [`FAULTS_ENV`].
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Transient => "transient",
            FaultKind::Permanent => "permanent",
            FaultKind::Hang => "hang",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FaultKind {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "transient" => Ok(FaultKind::Transient),
            "permanent" => Ok(FaultKind::Permanent),
            "hang" => Ok(FaultKind::Hang),
            _ => Err(()),
        }
    }
}

/// One fault rule: `workflow/step:kind[:count]`.
///
/// A rule matches a call whose [`crate::CallCtx`] has this workflow (or the rule says
/// `*`) and this step (or `*`, which also matches undo steps `undo:<step>`). Calls are
/// counted per `(operation, workflow, step)`; the `n`-th matching call of a step in an
/// operation is failed by the first matching rule whose `times` is at least `n` (or
/// unlimited). So `a/b:transient:2;a/b:permanent` fails calls 1 and 2 transiently and
/// every later one permanently.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FaultRule {
    /// Workflow name, or `*`.
    pub workflow: String,
    /// Step name (`undo:<step>` for an undo), or `*`.
    pub step: String,
    /// What happens.
    pub kind: FaultKind,
    /// How many calls per operation and step it fails; `None` = every call.
    pub times: Option<u32>,
}

/// A bad entry in [`FAULTS_ENV`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultParseError {
    /// Not of the form `workflow/step:kind[:count]`.
    #[error("OVC_SIM_FAULTS entry {entry:?}: expected workflow/step:kind[:count]")]
    Syntax {
        /// The entry.
        entry: String,
    },
    /// A kind other than transient, permanent or hang.
    #[error(
        "OVC_SIM_FAULTS entry {entry:?}: unknown fault kind {kind:?} \
         (expected transient, permanent or hang)"
    )]
    UnknownKind {
        /// The entry.
        entry: String,
        /// The kind as written.
        kind: String,
    },
    /// A count that is not a whole number from 1.
    #[error("OVC_SIM_FAULTS entry {entry:?}: count {count:?} is not a whole number from 1")]
    BadCount {
        /// The entry.
        entry: String,
        /// The count as written.
        count: String,
    },
}

impl FaultRule {
    /// A rule; `times: None` means every call.
    pub fn new(
        workflow: impl Into<String>,
        step: impl Into<String>,
        kind: FaultKind,
        times: Option<u32>,
    ) -> Self {
        Self {
            workflow: workflow.into(),
            step: step.into(),
            kind,
            times,
        }
    }

    /// Parses one entry `workflow/step:kind[:count]`. The step may itself contain `:`
    /// (`suspend/undo:scale_to_zero:transient`). Without a count, transient faults fire
    /// once per operation and step, permanent and hang faults every time.
    pub fn parse(entry: &str) -> Result<Self, FaultParseError> {
        let entry = entry.trim();
        let syntax = || FaultParseError::Syntax {
            entry: entry.to_string(),
        };
        let parts: Vec<&str> = entry.split(':').map(str::trim).collect();
        if parts.len() < 2 || !entry.contains('/') {
            return Err(syntax());
        }
        let last = parts[parts.len() - 1];
        let (target_parts, kind, count) = match parts[parts.len() - 2].parse::<FaultKind>() {
            Ok(kind) if parts.len() >= 3 => (&parts[..parts.len() - 2], kind, Some(last)),
            _ => match last.parse::<FaultKind>() {
                Ok(kind) => (&parts[..parts.len() - 1], kind, None),
                Err(()) => {
                    return Err(FaultParseError::UnknownKind {
                        entry: entry.to_string(),
                        kind: last.to_string(),
                    });
                }
            },
        };
        let target = target_parts.join(":");
        let (workflow, step) = target.split_once('/').ok_or_else(syntax)?;
        let (workflow, step) = (workflow.trim(), step.trim());
        let bad_name = |s: &str| s.is_empty() || s.contains(char::is_whitespace);
        if bad_name(workflow) || bad_name(step) || workflow.contains(':') || step.contains('/') {
            return Err(syntax());
        }
        let times = match count {
            Some(count) => match count.parse::<u32>() {
                Ok(n) if n >= 1 => Some(n),
                _ => {
                    return Err(FaultParseError::BadCount {
                        entry: entry.to_string(),
                        count: count.to_string(),
                    });
                }
            },
            None if kind == FaultKind::Transient => Some(1),
            None => None,
        };
        Ok(Self::new(workflow, step, kind, times))
    }

    /// Parses a `;`-separated list (empty entries are skipped), e.g.
    /// `suspend/scale_to_zero:transient:2;create/install_release:permanent;restore/*:hang`.
    pub fn parse_list(list: &str) -> Result<Vec<Self>, FaultParseError> {
        list.split(';')
            .filter(|entry| !entry.trim().is_empty())
            .map(Self::parse)
            .collect()
    }

    /// True when the rule applies to a call of `step` in `workflow`.
    pub fn matches(&self, workflow: &str, step: &str) -> bool {
        (self.workflow == "*" || self.workflow == workflow)
            && (self.step == "*" || self.step == step)
    }

    /// True when the rule fails the `hit`-th matching call (counted from 1).
    pub fn fires_on(&self, hit: u64) -> bool {
        self.times.is_none_or(|times| hit <= u64::from(times))
    }
}

impl fmt::Display for FaultRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}:{}", self.workflow, self.step, self.kind)?;
        if let Some(times) = self.times {
            write!(f, ":{times}")?;
        }
        Ok(())
    }
}

impl FromStr for FaultRule {
    type Err = FaultParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}
