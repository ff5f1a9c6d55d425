//! How a plugin call can fail. Every kind is caught, counted per Service and plugin, logged,
//! and reported to the caller, which resolves it by the Service's failure policy; none
//! reaches the rest of the daemon.

use std::fmt;

/// Why a plugin gave no usable answer.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The guest trapped (panic, unreachable, stack overflow, bad memory access).
    Trap,
    /// The call ran past its deadline and was interrupted.
    Deadline,
    /// The guest wanted more linear memory than the cap.
    Memory,
    /// The answer was outside the contract (an index out of range or one already tried).
    BadAnswer,
    /// A fresh instance could not be made.
    Instantiate,
    /// `configure` refused the Service's config on a worker.
    Configure,
    /// The plugin is disabled after repeated failures; the call was not made.
    Disabled,
    /// Not a failure: the instance is being set up off the worker, the call was not made.
    /// Never counted (it is not in [`Self::ALL`]); the caller parks the flow and asks again.
    Pending,
}

impl FailureKind {
    /// Every kind, in metric order.
    pub const ALL: [FailureKind; 7] = [
        Self::Trap,
        Self::Deadline,
        Self::Memory,
        Self::BadAnswer,
        Self::Instantiate,
        Self::Configure,
        Self::Disabled,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trap => "trap",
            Self::Deadline => "deadline",
            Self::Memory => "memory",
            Self::BadAnswer => "bad_answer",
            Self::Instantiate => "instantiate",
            Self::Configure => "configure",
            Self::Disabled => "disabled",
            Self::Pending => "pending",
        }
    }

    /// Whether the instance must be replaced (its state can no longer be trusted; wasmtime
    /// also refuses to enter a component instance that trapped).
    pub fn poisons(self) -> bool {
        matches!(self, Self::Trap | Self::Deadline | Self::Memory)
    }
}

/// A failure with what the runtime said, for the log line.
#[derive(Clone, Debug)]
pub struct Failure {
    /// Kind, for metrics and the caller's failure policy.
    pub kind: FailureKind,
    /// Detail for operators.
    pub detail: String,
}

impl Failure {
    /// A failure of `kind` with `detail` (bounded: a trap's message quotes names the module
    /// declares, and a refusal quotes the plugin).
    pub fn new(kind: FailureKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: super::text::bounded(detail.into()),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.as_str(), self.detail)
    }
}

impl crate::metrics::LabelValue for FailureKind {
    const ALL: &'static [Self] = &Self::ALL;

    fn label(self) -> &'static str {
        self.as_str()
    }

    fn index(self) -> usize {
        self as usize
    }
}
