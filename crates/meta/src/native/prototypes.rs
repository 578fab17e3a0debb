//! Proto-MAML's head on the native engine (Triantafillou et al. 2020, "Meta-Dataset"): before
//! the inner loop, class `k`'s head row is `2 c_k` and its bias `-|c_k|^2`, `c_k` the mean
//! features of the task's support images of class `k` at the initial parameters. Then
//! `W f + b = -|f - c_k|^2 + |f|^2`: the logits of a prototypical network (Snell et al. 2017)
//! up to a term the softmax ignores, which is what a protonet is here (no inner step).
//!
//! The meta-gradient goes through that initialisation: the engine's gradient with respect to
//! the head it started from, `(gW, gb)`, reaches the prototypes as `dc_k = 2 gW_k - 2 gb_k
//! c_k`, each support image of class `k` as `dc_k / n_k`, and the parameters through a reverse
//! pass of the feature extractor on the support set ([`engine::features_gradient`]).

use fewshot_model::engine::{self, Forward, Layout, Real};

use super::task::TaskData;

/// A task's prototype head: the support pass it was read from and the prototypes.
pub(crate) struct PrototypeHead<T: Real> {
    fwd: Forward<T>,
    /// `[n_way, features]`, in f64.
    centres: Vec<f64>,
    /// Support images per class.
    counts: Vec<usize>,
}

/// `theta` with its head replaced by the task's prototype head, and that head.
pub(crate) fn with_prototype_head<T: Real>(
    layout: &Layout,
    theta: &[T],
    task: &TaskData<'_, T>,
) -> (Vec<T>, PrototypeHead<T>) {
    let (n_way, f) = (layout.config().n_way, layout.config().features());
    let fwd = engine::forward_for_gradient(layout, theta, task.support, task.support_labels.len());
    let mut centres = vec![0f64; n_way * f];
    let mut counts = vec![0usize; n_way];
    for (row, &y) in fwd.features().chunks_exact(f).zip(task.support_labels) {
        let y = y as usize;
        counts[y] += 1;
        centres[y * f..(y + 1) * f].iter_mut().zip(row).for_each(|(c, v)| *c += v.to_f64());
    }
    for (k, &n) in counts.iter().enumerate() {
        // A class without support images keeps a zero prototype (a zero row and bias).
        if n > 0 {
            centres[k * f..(k + 1) * f].iter_mut().for_each(|c| *c /= n as f64);
        }
    }
    let mut out = theta.to_vec();
    let head = layout.head_start();
    let (w, b) = out[head..].split_at_mut(n_way * f);
    for k in 0..n_way {
        let c = &centres[k * f..(k + 1) * f];
        w[k * f..(k + 1) * f].iter_mut().zip(c).for_each(|(w, c)| *w = T::from_f64(2.0 * c));
        b[k] = T::from_f64(-c.iter().map(|c| c * c).sum::<f64>());
    }
    (out, PrototypeHead { fwd, centres, counts })
}

impl<T: Real> PrototypeHead<T> {
    /// Turn `grad`, the gradient with respect to the parameters the task started from (the
    /// prototype head's included), into the gradient with respect to `theta` (the parameters
    /// the prototypes were computed at): the head's part goes back through the prototypes
    /// into the feature extractor, and the stored head, which a task never reads, gets 0.
    pub(crate) fn pull_back(&self, layout: &Layout, theta: &[T], labels: &[u32], grad: &mut [T]) {
        let (n_way, f) = (layout.config().n_way, layout.config().features());
        let head = layout.head_start();
        let (gw, gb) = grad[head..].split_at(n_way * f);
        let mut dc = vec![0f64; n_way * f];
        for k in 0..n_way {
            let (gb, c) = (gb[k].to_f64(), &self.centres[k * f..(k + 1) * f]);
            for ((d, g), c) in dc[k * f..(k + 1) * f].iter_mut().zip(&gw[k * f..(k + 1) * f]).zip(c) {
                *d = 2.0 * g.to_f64() - 2.0 * gb * c;
            }
        }
        let mut d = vec![T::default(); labels.len() * f];
        for (row, &y) in d.chunks_exact_mut(f).zip(labels) {
            let (y, n) = (y as usize, self.counts[y as usize] as f64);
            row.iter_mut().zip(&dc[y * f..(y + 1) * f]).for_each(|(r, d)| *r = T::from_f64(d / n));
        }
        let mut through = vec![T::default(); layout.len()];
        engine::features_gradient(layout, theta, &self.fwd, &d, &mut through);
        grad.iter_mut().zip(&through).for_each(|(g, t)| *g += *t);
        grad[head..].iter_mut().for_each(|g| *g = T::default());
    }
}
