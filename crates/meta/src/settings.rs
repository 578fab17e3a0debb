//! The settings of adaptation to a task: [`InnerLoop`] (how MAML adapts while it trains, with
//! its [`Order`]) and [`Adaptation`] (how a model adapts before it labels a query set, with its
//! [`Scope`]).

use crate::error::{Error, Result};

/// How the meta-gradient treats the inner loop's gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// First-order MAML: inner gradients are constants (detached).
    First,
    /// Exact MAML: differentiate through the inner gradients (Hessian-vector terms included),
    /// like PyTorch's `autograd.grad(create_graph=True)`.
    #[default]
    Second,
}

/// Inner-loop settings of meta-training.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InnerLoop {
    /// SGD step size on the support loss.
    pub inner_lr: f64,
    /// Number of SGD steps (0: the meta-gradient is the plain gradient of the query loss).
    pub steps: usize,
    /// First or second order.
    pub order: Order,
}

impl InnerLoop {
    /// Check the settings; errors name the setting and its range.
    pub fn validate(&self) -> Result<()> {
        check_lr(self.inner_lr)
    }

    /// The same adaptation at test time (every parameter moves).
    pub fn adaptation(&self) -> Adaptation {
        Adaptation::all(self.inner_lr, self.steps)
    }
}

fn check_lr(inner_lr: f64) -> Result<()> {
    if !(inner_lr > 0.0 && inner_lr.is_finite()) {
        return Err(Error::InvalidSetting {
            name: "inner_lr",
            value: inner_lr.to_string(),
            expected: "a finite number > 0".into(),
        });
    }
    Ok(())
}

/// Which parameters adaptation to a task updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// Every parameter (MAML).
    #[default]
    All,
    /// The linear head only, the feature extractor frozen (a transfer baseline's fine-tuning).
    Head,
}

impl Scope {
    /// Whether adaptation updates the parameter named `name`.
    pub fn updates(self, name: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Head => name.starts_with("head."),
        }
    }
}

/// How a model adapts to a task's support set before it labels the query set: `steps` SGD
/// steps of `inner_lr` on the support loss, of the parameters in `scope`. Always first order
/// (the same fast weights as exact MAML; no graph is kept, since nothing differentiates them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Adaptation {
    /// SGD step size.
    pub inner_lr: f64,
    /// Number of SGD steps (0: no adaptation).
    pub steps: usize,
    /// Which parameters move.
    pub scope: Scope,
}

impl Adaptation {
    /// `steps` steps of `inner_lr` on every parameter, as MAML adapts.
    pub fn all(inner_lr: f64, steps: usize) -> Adaptation {
        Adaptation { inner_lr, steps, scope: Scope::All }
    }

    /// Check the settings; errors name the setting and its range.
    pub fn validate(&self) -> Result<()> {
        check_lr(self.inner_lr)
    }

    /// The inner loop that computes the same fast weights, when every parameter moves.
    pub(crate) fn inner_loop(&self) -> InnerLoop {
        InnerLoop { inner_lr: self.inner_lr, steps: self.steps, order: Order::First }
    }
}
