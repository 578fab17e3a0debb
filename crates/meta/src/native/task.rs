//! MAML for one task on the native engine: the inner loop ([`adapt`]), the task's
//! meta-gradient ([`task_meta_gradient`]) and its adapted query logits
//! ([`task_adapted_logits`]). The passes they call are compiled in `fewshot-model`, each for
//! the CPU's best vector extension (see `fewshot_model::engine`); this file only orders them.

use std::ops::Range;

use fewshot_model::engine::{self, Backward, Forward, Layout, Real};

use super::prototypes::with_prototype_head;
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
    /// With learned rates, the gradient with respect to them, `[parameter * steps + step]`
    /// (see [`crate::rates::RateTable`]); empty otherwise.
    pub rate_grad: Vec<f64>,
    /// With per-step batch norm, the gradient with respect to the sets, `[set][slot]`
    /// flattened (see [`BnSets`]); empty otherwise.
    pub bn_grad: Vec<f64>,
}

/// The inner loop's step sizes: one number, or one per flat parameter and step (MAML++'s
/// learned rates, or zero where per-step batch norm freezes the batch-norm parameters).
#[derive(Debug, Clone)]
pub(crate) enum StepSizes<T> {
    /// The same step size for every parameter and step.
    Uniform(T),
    /// Step sizes spread over the flat layout.
    PerParameter {
        /// Per step, every flat parameter's step size (inner steps beyond the last use the
        /// last).
        per_step: Vec<Vec<T>>,
        /// With learned rates: for each rate tensor (parameter of
        /// [`fewshot_model::param_specs`], in order), its range in the flat layout (`None`: a
        /// conv bias, which is not stored, or a frozen batch-norm parameter; its rate's
        /// gradient is 0).
        learned: Option<Vec<Option<Range<usize>>>>,
    },
}

/// MAML++'s per-step batch-norm sets on the flat layout (see [`crate::bn_steps`]).
#[derive(Debug, Clone)]
pub(crate) struct BnSets<T> {
    /// Per set, the values of the batch-norm slots, in the order of `ranges`.
    pub sets: Vec<Vec<T>>,
    /// The flat ranges of the batch-norm parameters (of [`crate::bn_steps::BnStepTable`]'s
    /// order).
    pub ranges: Vec<Range<usize>>,
}

impl<T: Real> BnSets<T> {
    fn index(&self, step: usize) -> usize {
        step.min(self.sets.len() - 1)
    }

    /// Write step `step`'s set into the batch-norm slots of `theta`.
    fn apply(&self, step: usize, theta: &mut [T]) {
        let mut values = self.sets[self.index(step)].iter();
        for r in &self.ranges {
            theta[r.clone()].iter_mut().zip(&mut values).for_each(|(t, v)| *t = *v);
        }
    }

    /// Move the batch-norm slots of the gradient `v` into step `step`'s set's gradient `acc`
    /// (`[set][slot]`, flattened), leaving zeros in `v`.
    fn take_gradient(&self, step: usize, v: &mut [T], acc: &mut [f64]) {
        let len = self.sets[0].len();
        let mut at = self.index(step) * len;
        for r in &self.ranges {
            for x in &mut v[r.clone()] {
                acc[at] += x.to_f64();
                *x = T::default();
                at += 1;
            }
        }
    }
}

impl<T: Real> StepSizes<T> {
    /// Steps with their own sizes (1 for a uniform step size).
    fn learned_steps(&self) -> usize {
        match self {
            StepSizes::Uniform(_) => 1,
            StepSizes::PerParameter { per_step, .. } => per_step.len(),
        }
    }

    /// `out = size(step) * v`, elementwise.
    #[inline(always)]
    fn scale_into(&self, step: usize, v: &[T], out: &mut Vec<T>) {
        out.clear();
        match self {
            StepSizes::Uniform(lr) => out.extend(v.iter().map(|v| *lr * *v)),
            StepSizes::PerParameter { per_step, .. } => {
                let lr = &per_step[step.min(per_step.len() - 1)];
                out.extend(v.iter().zip(lr).map(|(v, lr)| *lr * *v));
            }
        }
    }

    /// `w[from..] -= size(step) * g[from..]`.
    #[inline(always)]
    fn descend(&self, step: usize, w: &mut [T], g: &[T], from: usize) {
        match self {
            StepSizes::Uniform(lr) => w[from..].iter_mut().zip(&g[from..]).for_each(|(w, g)| *w -= *lr * *g),
            StepSizes::PerParameter { per_step, .. } => {
                let lr = &per_step[step.min(per_step.len() - 1)];
                w[from..].iter_mut().zip(&g[from..]).zip(&lr[from..]).for_each(|((w, g), lr)| *w -= *lr * *g);
            }
        }
    }
}

/// What one inner step leaves behind: the parameters it started from, its support gradient
/// and, for the second-order pull-back, the support pass there.
struct InnerStep<T: Real> {
    theta: Vec<T>,
    grad: Vec<T>,
    pullback: Option<Pullback<T>>,
}

/// One inner step's support pass, from which (with the step's gradient) [`engine::hvp`]
/// computes `H v`.
struct Pullback<T: Real> {
    fwd: Forward<T>,
    bwd: Backward<T>,
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
    /// The parameters each step started from and its gradient (for a multi-step loss or
    /// learned rates, first order).
    Parameters,
    /// The parameters and the passes (for second order).
    Pullbacks,
}

/// `steps` SGD steps of `sizes` on the support set from `theta` (step `s`'s batch-norm
/// parameters from set `s` of `bn`, when given), updating the parameters `from..` of the flat
/// layout (0: all; [`Layout::head_start`]: the head only, the rest frozen), keeping what
/// `keep` says of each step.
fn adapt<T: Real>(
    layout: &Layout,
    theta: &[T],
    task: &TaskData<'_, T>,
    (steps, sizes, bn): (usize, &StepSizes<T>, Option<&BnSets<T>>),
    from: usize,
    keep: Keep,
) -> Adapted<T> {
    let mut fast = theta.to_vec();
    let mut kept = Vec::new();
    let mut grad = vec![T::default(); layout.len()];
    let n_support = task.support_labels.len();
    for step in 0..steps {
        if let Some(bn) = bn {
            bn.apply(step, &mut fast);
        }
        // Only a pass kept for the Hessian-vector product needs the whole forward cache.
        let fwd = if keep == Keep::Pullbacks {
            engine::forward(layout, &fast, task.support, n_support)
        } else {
            engine::forward_for_gradient(layout, &fast, task.support, n_support)
        };
        let pullback = if keep == Keep::Pullbacks {
            let bwd = engine::backward(layout, &fast, &fwd, task.support_labels, &mut grad);
            Some(Pullback { fwd, bwd })
        } else {
            engine::gradient(layout, &fast, &fwd, task.support_labels, &mut grad);
            None
        };
        if keep == Keep::Nothing {
            // Nothing refers to the step's parameters afterwards: update them in place.
            sizes.descend(step, &mut fast, &grad, from);
        } else {
            let mut next = fast.clone();
            sizes.descend(step, &mut next, &grad, from);
            let theta = std::mem::replace(&mut fast, next);
            let grad = std::mem::replace(&mut grad, vec![T::default(); layout.len()]);
            kept.push(InnerStep { theta, grad, pullback });
        }
    }
    if let Some(bn) = bn {
        // The query pass after step s uses set s (after no step, set 0).
        bn.apply(steps.saturating_sub(1), &mut fast);
    }
    Adapted { fast, steps: kept }
}

/// One task's MAML meta-gradient: adapt on the support set, take the query loss's gradient
/// at the fast weights, and (second order) pull it back through every inner step with
/// Hessian-vector products: `v <- v - H(theta_i) (lr_i v)` from the last step to the
/// first, `lr_i` the step's size (a number, or learned rates per parameter). With a
/// multi-step loss, each intermediate step's weighted query gradient joins `v` as the
/// pull-back passes it. With learned rates, step `i`'s rate of a tensor gets `-<v, g_i>` over
/// that tensor, `v` the gradient with respect to `theta_{i+1}` and `g_i` the step's support
/// gradient (exact in second order; in first order `v` is first order too).
pub(crate) fn task_meta_gradient<T: Real>(
    layout: &Layout,
    theta: &[T],
    task: &TaskData<'_, T>,
    inner: &InnerLoop,
    sizes: &StepSizes<T>,
    bn: Option<&BnSets<T>>,
) -> TaskOutcome<T> {
    let weights = inner.step_weights(); // of the query loss after steps 1..=k
    let multi_step = weights.iter().rev().skip(1).any(|&w| w != 0.0);
    let rate_ranges = match sizes {
        StepSizes::PerParameter { learned: Some(ranges), .. } => Some(ranges),
        _ => None,
    };
    let keep = match (inner.order, multi_step || rate_ranges.is_some() || bn.is_some()) {
        (Order::Second, _) => Keep::Pullbacks,
        (Order::First, true) => Keep::Parameters,
        (Order::First, false) => Keep::Nothing,
    };
    let (start, prototypes) = match inner.prototypes {
        true => {
            let (start, head) = with_prototype_head(layout, theta, task);
            (std::borrow::Cow::Owned(start), Some(head))
        }
        false => (std::borrow::Cow::Borrowed(theta), None),
    };
    let adapted = adapt(layout, &start, task, (inner.steps, sizes, bn), 0, keep);
    let fwd = engine::forward_for_gradient(layout, &adapted.fast, task.query, task.n_query);
    let mut grad = vec![T::default(); layout.len()];
    engine::gradient(layout, &adapted.fast, &fwd, task.query_labels, &mut grad);
    if let Some(&last) = weights.last()
        && last != 1.0
    {
        let w = T::from_f64(last);
        grad.iter_mut().for_each(|g| *g = w * *g);
    }
    let mut hv = Vec::new();
    let mut direction = Vec::new();
    let mut rate_grad = Vec::new();
    let mut bn_grad = bn.map_or(Vec::new(), |bn| vec![0f64; bn.sets.len() * bn.sets[0].len()]);
    // Step `i` (0-based) took theta_i to theta_{i+1}; theta_0 = theta carries no query loss.
    // With per-step batch norm, `v`'s batch-norm slots hold the gradient of step i's set (the
    // query pass after step i and step i's support pass use it) until it is moved out.
    for (i, step) in adapted.steps.iter().enumerate().rev() {
        if let Some(ranges) = rate_ranges {
            add_rate_gradients(ranges, sizes.learned_steps(), i, &grad, &step.grad, &mut rate_grad);
        }
        if let Some(p) = &step.pullback {
            hv.resize(layout.len(), T::default());
            match sizes {
                StepSizes::Uniform(lr) => {
                    engine::hvp(layout, &step.theta, &p.fwd, &p.bwd, &step.grad, &grad, &mut hv);
                    grad.iter_mut().zip(&hv).for_each(|(v, h)| *v -= *lr * *h);
                }
                StepSizes::PerParameter { .. } => {
                    // H is symmetric: the pull-back of theta - lr * g(theta) is v - H (lr v).
                    sizes.scale_into(i, &grad, &mut direction);
                    engine::hvp(layout, &step.theta, &p.fwd, &p.bwd, &step.grad, &direction, &mut hv);
                    grad.iter_mut().zip(&hv).for_each(|(v, h)| *v -= *h);
                }
            }
        }
        if let Some(bn) = bn {
            bn.take_gradient(i, &mut grad, &mut bn_grad);
        }
        if i >= 1 && weights[i - 1] != 0.0 {
            match bn {
                None => add_query_gradient(layout, task, &mut grad, &step.theta, weights[i - 1]),
                Some(bn) => {
                    // The query pass after step i - 1: theta_i's weights, set i - 1.
                    let mut theta_q = step.theta.clone();
                    bn.apply(i - 1, &mut theta_q);
                    add_query_gradient(layout, task, &mut grad, &theta_q, weights[i - 1]);
                }
            }
        }
    }
    if let Some(bn) = bn {
        bn.take_gradient(0, &mut grad, &mut bn_grad); // with no inner step, set 0's
    }
    if let Some(head) = prototypes {
        head.pull_back(layout, theta, task.support_labels, &mut grad);
    }
    TaskOutcome { grad, loss: fwd.loss(task.query_labels), correct: fwd.correct(task.query_labels), rate_grad, bn_grad }
}

/// Step `step`'s learned rates' gradients into `out` (`[tensor * k + step]`): `-<v, g>` over
/// each tensor's range, `v` the gradient with respect to the step's result and `g` its
/// support gradient (accumulated in f64: a conv weight has tens of thousands of terms).
fn add_rate_gradients<T: Real>(
    ranges: &[Option<Range<usize>>],
    k: usize,
    step: usize,
    v: &[T],
    g: &[T],
    out: &mut Vec<f64>,
) {
    out.resize(ranges.len() * k, 0.0);
    for (p, range) in ranges.iter().enumerate() {
        if let Some(r) = range {
            let dot: f64 = v[r.clone()].iter().zip(&g[r.clone()]).map(|(v, g)| v.to_f64() * g.to_f64()).sum();
            out[p * k + step.min(k - 1)] -= dot;
        }
    }
}

/// Add `weight` times the query loss's gradient at `theta_i` into `v`.
fn add_query_gradient<T: Real>(layout: &Layout, task: &TaskData<'_, T>, v: &mut [T], theta_i: &[T], weight: f64) {
    let fwd = engine::forward_for_gradient(layout, theta_i, task.query, task.n_query);
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
    sizes: &StepSizes<T>,
    bn: Option<&BnSets<T>>,
) -> Vec<T> {
    let from = match adaptation.scope {
        Scope::All => 0,
        Scope::Head => layout.head_start(),
    };
    let start = match adaptation.prototypes {
        true => std::borrow::Cow::Owned(with_prototype_head(layout, theta, task).0),
        false => std::borrow::Cow::Borrowed(theta),
    };
    let adapted = adapt(layout, &start, task, (adaptation.steps, sizes, bn), from, Keep::Nothing);
    engine::forward_for_gradient(layout, &adapted.fast, task.query, task.n_query).logits
}
