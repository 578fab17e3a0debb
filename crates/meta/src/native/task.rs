//! MAML for one task on the native engine: the inner loop ([`adapt`]), the task's
//! meta-gradient ([`task_meta_gradient`]) and its adapted query logits
//! ([`task_adapted_logits`]), each compiled for the CPU's best vector extension.

use fewshot_model::engine::{self, Backward, Forward, Layout, Real, with_best_simd};

use crate::settings::{Adaptation, InnerLoop, Order, Scope};

/// One task's images and labels, images channels last (see
/// [`Layout::images_to_channels_last`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct TaskData<'a, T> {
    /// Support images: `[n_support, h, w, c]`.
    pub support: &'a [T],
    /// Support labels.
    pub support_labels: &'a [u32],
    /// Query images: `[n_query, h, w, c]`.
    pub query: &'a [T],
    /// Query labels (empty when the query set is unlabelled).
    pub query_labels: &'a [u32],
    /// Query images in the task.
    pub n_query: usize,
}

/// Result of [`task_meta_gradient`].
#[derive(Debug, Clone)]
pub(crate) struct TaskOutcome<T> {
    /// Gradient of the query loss after adaptation with respect to the initial parameters
    /// (second order) or to the fast weights (first order).
    pub grad: Vec<T>,
    /// Query loss after adaptation.
    pub loss: f64,
    /// Query images classified correctly after adaptation.
    pub correct: usize,
}

/// What one inner step leaves behind: the parameters it started from and, for the
/// second-order pull-back, the support pass there and its gradient.
struct InnerStep<T: Real> {
    theta: Vec<T>,
    pullback: Option<Pullback<T>>,
}

/// One inner step's support pass and gradient, from which [`engine::hvp`] computes `H v`.
struct Pullback<T: Real> {
    fwd: Forward<T>,
    bwd: Backward<T>,
    grad: Vec<T>,
}

/// The fast weights after the inner loop and, when asked, every step's [`InnerStep`].
struct Adapted<T: Real> {
    fast: Vec<T>,
    steps: Vec<InnerStep<T>>,
}

/// What [`adapt`] keeps of each step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// Nothing: only the fast weights are wanted.
    Nothing,
    /// The parameters each step started from (for a multi-step loss, first order).
    Parameters,
    /// The parameters and the passes (for second order).
    Pullbacks,
}

/// `inner.steps` SGD steps of `inner.inner_lr` on the support set from `theta`, updating the
/// parameters `from..` of the flat layout (0: all; [`Layout::head_start`]: the head only, the
/// rest frozen), keeping what `keep` says of each step.
#[inline(always)]
fn adapt<T: Real>(
    layout: &Layout,
    theta: &[T],
    task: &TaskData<'_, T>,
    inner: &InnerLoop,
    from: usize,
    keep: Keep,
) -> Adapted<T> {
    let lr = T::from_f64(inner.inner_lr);
    let mut fast = theta.to_vec();
    let mut kept = Vec::new();
    let mut grad = vec![T::default(); layout.len()];
    let n_support = task.support_labels.len();
    for _ in 0..inner.steps {
        let fwd = engine::forward(layout, &fast, task.support, n_support);
        let mut next = fast.clone();
        let pullback = if keep == Keep::Pullbacks {
            let bwd = engine::backward(layout, &fast, &fwd, task.support_labels, &mut grad);
            Some((fwd, bwd))
        } else {
            engine::gradient(layout, &fast, &fwd, task.support_labels, &mut grad);
            None
        };
        next[from..].iter_mut().zip(&grad[from..]).for_each(|(w, g)| *w -= lr * *g);
        let theta = std::mem::replace(&mut fast, next);
        if keep != Keep::Nothing {
            let pullback = pullback.map(|(fwd, bwd)| Pullback { fwd, bwd, grad: grad.clone() });
            kept.push(InnerStep { theta, pullback });
        }
    }
    Adapted { fast, steps: kept }
}

/// One task's MAML meta-gradient: adapt on the support set, take the query loss's gradient
/// at the fast weights, and (second order) pull it back through every inner step with
/// Hessian-vector products: `v <- v - inner_lr * H(theta_i) v` from the last step to the
/// first. With a multi-step loss, each intermediate step's weighted query gradient joins `v`
/// as the pull-back passes it.
pub(crate) fn task_meta_gradient<T: Real>(
    layout: &Layout,
    theta: &[T],
    task: &TaskData<'_, T>,
    inner: &InnerLoop,
) -> TaskOutcome<T> {
    with_best_simd(
        #[inline(always)]
        || meta_gradient_body(layout, theta, task, inner),
    )
}

#[inline(always)]
fn meta_gradient_body<T: Real>(
    layout: &Layout,
    theta: &[T],
    task: &TaskData<'_, T>,
    inner: &InnerLoop,
) -> TaskOutcome<T> {
    let weights = inner.step_weights(); // of the query loss after steps 1..=k
    let multi_step = weights.iter().rev().skip(1).any(|&w| w != 0.0);
    let keep = match (inner.order, multi_step) {
        (Order::Second, _) => Keep::Pullbacks,
        (Order::First, true) => Keep::Parameters,
        (Order::First, false) => Keep::Nothing,
    };
    let adapted = adapt(layout, theta, task, inner, 0, keep);
    let fwd = engine::forward(layout, &adapted.fast, task.query, task.n_query);
    let mut grad = vec![T::default(); layout.len()];
    engine::gradient(layout, &adapted.fast, &fwd, task.query_labels, &mut grad);
    if let Some(&last) = weights.last()
        && last != 1.0
    {
        let w = T::from_f64(last);
        grad.iter_mut().for_each(|g| *g = w * *g);
    }
    let lr = T::from_f64(inner.inner_lr);
    let mut hv = Vec::new();
    // Step `i` (0-based) took theta_i to theta_{i+1}; theta_0 = theta carries no query loss.
    for (i, step) in adapted.steps.iter().enumerate().rev() {
        if let Some(p) = &step.pullback {
            hv.resize(layout.len(), T::default());
            engine::hvp(layout, &step.theta, &p.fwd, &p.bwd, &p.grad, &grad, &mut hv);
            grad.iter_mut().zip(&hv).for_each(|(v, h)| *v -= lr * *h);
        }
        if i >= 1 && weights[i - 1] != 0.0 {
            add_query_gradient(layout, task, &mut grad, &step.theta, weights[i - 1]);
        }
    }
    TaskOutcome { grad, loss: fwd.loss(task.query_labels), correct: fwd.correct(task.query_labels) }
}

/// Add `weight` times the query loss's gradient at `theta_i` into `v`.
#[inline(always)]
fn add_query_gradient<T: Real>(layout: &Layout, task: &TaskData<'_, T>, v: &mut [T], theta_i: &[T], weight: f64) {
    let fwd = engine::forward(layout, theta_i, task.query, task.n_query);
    let mut g = vec![T::default(); layout.len()];
    engine::gradient(layout, theta_i, &fwd, task.query_labels, &mut g);
    let w = T::from_f64(weight);
    v.iter_mut().zip(&g).for_each(|(v, g)| *v += w * *g);
}

/// Query logits (`[n_query, n_way]`) after adapting to the task's support set as
/// `adaptation` says.
pub(crate) fn task_adapted_logits<T: Real>(
    layout: &Layout,
    theta: &[T],
    task: &TaskData<'_, T>,
    adaptation: &Adaptation,
) -> Vec<T> {
    with_best_simd(
        #[inline(always)]
        || {
            let from = match adaptation.scope {
                Scope::All => 0,
                Scope::Head => layout.head_start(),
            };
            let adapted = adapt(layout, theta, task, &adaptation.inner_loop(), from, Keep::Nothing);
            engine::forward(layout, &adapted.fast, task.query, task.n_query).logits
        },
    )
}
