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

/// What one inner step leaves for the second-order pull-back: the parameters it started from,
/// the support pass there, and its gradient.
struct InnerStep<T: Real> {
    theta: Vec<T>,
    fwd: Forward<T>,
    bwd: Backward<T>,
    grad: Vec<T>,
}

/// The fast weights after the inner loop, and (second order) each step's [`InnerStep`].
struct Adapted<T: Real> {
    fast: Vec<T>,
    steps: Vec<InnerStep<T>>,
}

/// `inner.steps` SGD steps of `inner.inner_lr` on the support set from `theta`, updating the
/// parameters `from..` of the flat layout (0: all; [`Layout::head_start`]: the head only, the
/// rest frozen). With [`Order::Second`], every step's passes are kept.
#[inline(always)]
fn adapt<T: Real>(layout: &Layout, theta: &[T], task: &TaskData<'_, T>, inner: &InnerLoop, from: usize) -> Adapted<T> {
    let lr = T::from_f64(inner.inner_lr);
    let mut fast = theta.to_vec();
    let mut kept = Vec::new();
    let mut grad = vec![T::default(); layout.len()];
    let n_support = task.support_labels.len();
    for _ in 0..inner.steps {
        let fwd = engine::forward(layout, &fast, task.support, n_support);
        let mut next = fast.clone();
        let update = |next: &mut [T], grad: &[T]| {
            next[from..].iter_mut().zip(&grad[from..]).for_each(|(w, g)| *w -= lr * *g);
        };
        match inner.order {
            Order::Second => {
                let bwd = engine::backward(layout, &fast, &fwd, task.support_labels, &mut grad);
                update(&mut next, &grad);
                let theta = std::mem::replace(&mut fast, next);
                kept.push(InnerStep { theta, fwd, bwd, grad: grad.clone() });
            }
            Order::First => {
                engine::gradient(layout, &fast, &fwd, task.support_labels, &mut grad);
                update(&mut next, &grad);
                fast = next;
            }
        }
    }
    Adapted { fast, steps: kept }
}

/// One task's MAML meta-gradient: adapt on the support set, take the query loss's gradient
/// at the fast weights, and (second order) pull it back through every inner step with
/// Hessian-vector products: `v <- v - inner_lr * H(theta_i) v` from the last step to the first.
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
    let adapted = adapt(layout, theta, task, inner, 0);
    let fwd = engine::forward(layout, &adapted.fast, task.query, task.n_query);
    let mut grad = vec![T::default(); layout.len()];
    engine::gradient(layout, &adapted.fast, &fwd, task.query_labels, &mut grad);
    if !adapted.steps.is_empty() {
        // Second order.
        let lr = T::from_f64(inner.inner_lr);
        let mut hv = vec![T::default(); layout.len()];
        for step in adapted.steps.iter().rev() {
            engine::hvp(layout, &step.theta, &step.fwd, &step.bwd, &step.grad, &grad, &mut hv);
            grad.iter_mut().zip(&hv).for_each(|(v, h)| *v -= lr * *h);
        }
    }
    TaskOutcome { grad, loss: fwd.loss(task.query_labels), correct: fwd.correct(task.query_labels) }
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
            let adapted = adapt(layout, theta, task, &adaptation.inner_loop(), from);
            engine::forward(layout, &adapted.fast, task.query, task.n_query).logits
        },
    )
}
