//! The reference path: MAML through candle's autograd over [`fewshot_model::forward`], the
//! whole meta-batch of a chunk as one batched computation. Simple and general (any dtype or
//! device candle supports); the native engine ([`crate::native`]) is tested against it.
//! Reached through [`crate::Engine::Candle`]; [`adapt`] is public for tests that
//! differentiate the inner loop themselves.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor, Var};
use fewshot_model::{ConvNetConfig, ParamMap, ParamVars, accuracy, cross_entropy, expand, forward};

use crate::StepStats;
use crate::batch::{TaskBatch, TaskInputs};
use crate::error::{Error, Result};
use crate::grad_mode::{GradMode, backward, run_in_mode};
use crate::meta_params::MetaParams;
use crate::rates::RateTable;
use crate::settings::{Adaptation, InnerLoop, Order, Scope};
use crate::workers::Job;

/// Adapt `params` to each task's support set with `inner.steps` SGD steps (of the learned
/// rates when `params` has them, see [`crate::rates`]; the fast weights are the net's only).
///
/// Returns fast weights with a leading task dimension. With [`Order::Second`] they keep the
/// graph back to `params` through the inner gradients; with [`Order::First`] the inner
/// gradients are detached, so fast weights depend on `params` only through the identity.
///
/// # Shapes
/// `params`: without a task dimension; `support_images`: `[t, n, c, h, w]`;
/// `support_labels`: `[t, n]`.
pub fn adapt(
    config: &ConvNetConfig,
    params: &MetaParams,
    support_images: &Tensor,
    support_labels: &Tensor,
    inner: &InnerLoop,
) -> Result<ParamMap> {
    adapt_scoped(config, params, support_images, support_labels, inner, Scope::All)
}

/// [`adapt`] updating only the parameters in `scope` (the others keep their values).
fn adapt_scoped(
    config: &ConvNetConfig,
    params: &MetaParams,
    support_images: &Tensor,
    support_labels: &Tensor,
    inner: &InnerLoop,
    scope: Scope,
) -> Result<ParamMap> {
    inner.validate()?;
    params.refuse_bn_steps()?;
    let learned = params.rates.as_ref().map(|r| Ok::<_, Error>((r, RateTable::from_map(config, r)?))).transpose()?;
    let t = support_images.dim(0)?;
    let mut fast = expand(&params.net, t)?;
    if inner.prototypes {
        let (weight, bias) = prototype_head(config, &fast, support_images, support_labels)?;
        fast.insert("head.weight".into(), weight);
        fast.insert("head.bias".into(), bias);
    }
    let mode = grad_mode(inner.order);
    for step in 0..inner.steps {
        // Each task's gradient is read off a zero Var added to its fast weights: the summed
        // loss of independent tasks has exactly the per-task gradients there.
        let probes: BTreeMap<&String, Var> =
            fast.iter().map(|(k, v)| Ok((k, Var::zeros(v.shape(), v.dtype(), v.device())?))).collect::<Result<_>>()?;
        let probed: ParamMap = fast
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.broadcast_add(probes[k].as_tensor())?)))
            .collect::<Result<_>>()?;
        let loss = cross_entropy(&forward(config, &probed, support_images)?, support_labels)?.sum_all()?;
        let grads = backward(&loss, mode)?;
        fast = fast
            .iter()
            .map(|(k, w)| {
                if !scope.updates(k) {
                    return Ok((k.clone(), w.clone()));
                }
                // A parameter the loss does not depend on (a conv bias before batch norm)
                // has a zero gradient.
                let g = match (grads.get(probes[k].as_tensor()), inner.order) {
                    (Some(g), Order::Second) => g.clone(),
                    (Some(g), Order::First) => g.detach(),
                    (None, _) => w.zeros_like()?,
                };
                let update = match &learned {
                    None => (g * inner.inner_lr)?,
                    // The learned rate is a variable: the meta-gradient reaches it too.
                    Some((rates, table)) => g.broadcast_mul(&rates[k].narrow(0, table.step_index(step), 1)?)?,
                };
                Ok((k.clone(), (w - update)?))
            })
            .collect::<Result<_>>()?;
    }
    Ok(fast)
}

/// Proto-MAML's head of each task (see [`crate::HeadInit::Prototypes`]): row `2 c_k` and bias
/// `-|c_k|^2`, `c_k` the mean features of class `k`'s support images under `fast` (with a task
/// dimension), differentiable with respect to them.
fn prototype_head(
    config: &ConvNetConfig,
    fast: &ParamMap,
    support_images: &Tensor,
    support_labels: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let feats = fewshot_model::features(config, fast, support_images)?; // [t, n, f]
    let classes = Tensor::arange(0u32, config.n_way as u32, support_labels.device())?.reshape((1, 1, config.n_way))?;
    let one_hot = support_labels.unsqueeze(2)?.broadcast_eq(&classes)?.to_dtype(feats.dtype())?; // [t, n, k]
    let counts = one_hot.sum_keepdim(1)?.transpose(1, 2)?.clamp(1.0, f64::INFINITY)?; // [t, k, 1]
    let centres = one_hot.transpose(1, 2)?.contiguous()?.matmul(&feats)?.broadcast_div(&counts)?; // [t, k, f]
    let bias = centres.sqr()?.sum(2)?.neg()?; // [t, k]
    Ok(((centres * 2.0)?, bias))
}

fn grad_mode(order: Order) -> GradMode {
    match order {
        Order::Second => GradMode::KeepGraph,
        Order::First => GradMode::Detach,
    }
}

/// The meta-gradient of the mean query loss after adaptation, with respect to `params`.
///
/// Tasks are processed `task_chunk` at a time (each chunk as one batched computation, chunks
/// in parallel on the workers of the inner loop's gradient mode); their gradients are summed
/// in chunk order, so the result equals one pass over the whole batch while only a few chunks'
/// graphs, the costly part of second order, are alive at a time. The outer backward pass
/// always runs detached (it needs no graph of its own), which halves memory against keeping it.
pub(crate) fn meta_gradient(
    config: &ConvNetConfig,
    params: &MetaParams,
    batch: &TaskBatch,
    inner: &InnerLoop,
    task_chunk: usize,
) -> Result<(MetaParams, StepStats)> {
    inner.validate()?;
    if inner.step_weights().iter().rev().skip(1).any(|&w| w != 0.0) {
        return Err(Error::InvalidSetting {
            name: "multi_step",
            value: "on".into(),
            expected: "off for the candle engine (the multi-step loss is the native engine's)".into(),
        });
    }
    if task_chunk == 0 {
        return Err(Error::InvalidSetting { name: "task_chunk", value: "0".into(), expected: "at least 1".into() });
    }
    params.refuse_bn_steps()?;
    let vars =
        Vars { net: ParamVars::new(&params.net)?, rates: params.rates.as_ref().map(ParamVars::new).transpose()? };
    let t = batch.n_tasks();
    let jobs: Vec<Job<Result<(MetaParams, f64, f64)>>> = (0..t)
        .step_by(task_chunk)
        .map(|start| -> Result<Job<Result<(MetaParams, f64, f64)>>> {
            let chunk = batch.narrow(start, task_chunk.min(t - start))?;
            let (config, vars, inner) = (*config, vars.clone(), *inner);
            Ok(Box::new(move || chunk_meta_gradient(&config, &vars, &chunk, &inner, t)))
        })
        .collect::<Result<_>>()?;
    let per_chunk: Vec<(MetaParams, f64, f64)> =
        run_in_mode(grad_mode(inner.order), jobs)?.into_iter().collect::<Result<_>>()?;
    let (mut loss_sum, mut acc_sum) = (0f64, 0f64);
    let mut sum: Option<MetaParams> = None;
    let add = |a: &ParamMap, b: &ParamMap| -> Result<ParamMap> {
        a.iter().map(|(k, v)| Ok((k.clone(), (v + &b[k])?))).collect()
    };
    for (grads, l, a) in per_chunk {
        loss_sum += l;
        acc_sum += a;
        sum = Some(match sum {
            None => grads,
            Some(acc) => MetaParams {
                net: add(&acc.net, &grads.net)?,
                rates: match (&acc.rates, &grads.rates) {
                    (Some(x), Some(y)) => Some(add(x, y)?),
                    _ => None,
                },
                bn_steps: None,
            },
        });
    }
    let grads = sum.expect("a batch has at least one task");
    Ok((grads, StepStats { loss: (loss_sum / t as f64) as f32, accuracy: (acc_sum / t as f64) as f32 }))
}

/// One chunk's share of the meta-gradient (its loss divided by the batch's `t` tasks), with
/// its summed loss and accuracy.
fn chunk_meta_gradient(
    config: &ConvNetConfig,
    vars: &Vars,
    chunk: &TaskBatch,
    inner: &InnerLoop,
    t: usize,
) -> Result<(MetaParams, f64, f64)> {
    let params =
        MetaParams { net: vars.net.tensors(), rates: vars.rates.as_ref().map(ParamVars::tensors), bn_steps: None };
    let fast = adapt(config, &params, &chunk.support_images, &chunk.support_labels, inner)?;
    let logits = forward(config, &fast, &chunk.query_images)?;
    let losses = cross_entropy(&logits, &chunk.query_labels)?; // [chunk]
    let loss_sum = losses.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let acc_sum = accuracy(&logits, &chunk.query_labels)?.sum_all()?.to_scalar::<f32>()? as f64;
    if !loss_sum.is_finite() {
        return Err(Error::NonFinite(loss_sum as f32));
    }
    let grads = backward(&(losses.sum_all()? / t as f64)?, GradMode::Detach)?;
    let of = |vars: &ParamVars| -> Result<ParamMap> {
        vars.iter()
            .map(|(name, var)| {
                let g = match grads.get(var.as_tensor()) {
                    Some(g) => g.detach(),
                    None => var.as_tensor().zeros_like()?, // the loss does not depend on it
                };
                Ok((name.clone(), g))
            })
            .collect()
    };
    let out = MetaParams { net: of(&vars.net)?, rates: vars.rates.as_ref().map(of).transpose()?, bn_steps: None };
    Ok((out, loss_sum, acc_sum))
}

/// The variables a meta-gradient differentiates: the net's, and learned rates if any.
#[derive(Clone)]
struct Vars {
    net: ParamVars,
    rates: Option<ParamVars>,
}

/// Query logits `[t, n_query, n_way]` after adapting to each task's support set: tasks one
/// at a time (small computations keep activations in cache on the CPU; see
/// docs/performance.md), in parallel on the detached workers, concatenated in task order.
pub(crate) fn adapted_logits(
    config: &ConvNetConfig,
    params: &MetaParams,
    tasks: TaskInputs<'_>,
    adaptation: &Adaptation,
) -> Result<Tensor> {
    adaptation.validate()?;
    let detached = params.map(|m| Ok(m.iter().map(|(k, v)| (k.clone(), v.detach())).collect()))?;
    let t = tasks.support_images.dim(0)?;
    let jobs: Vec<Job<Result<Tensor>>> = (0..t)
        .map(|i| -> Result<Job<Result<Tensor>>> {
            let support_images = tasks.support_images.narrow(0, i, 1)?;
            let support_labels = tasks.support_labels.narrow(0, i, 1)?;
            let query_images = tasks.query_images.narrow(0, i, 1)?;
            let (config, params, adaptation) = (*config, detached.clone(), *adaptation);
            Ok(Box::new(move || {
                let inner = adaptation.inner_loop();
                let fast = adapt_scoped(&config, &params, &support_images, &support_labels, &inner, adaptation.scope)?;
                let fast: ParamMap = fast.into_iter().map(|(k, v)| (k, v.detach())).collect();
                Ok(forward(&config, &fast, &query_images)?)
            }))
        })
        .collect::<Result<_>>()?;
    let per_task: Vec<Tensor> = run_in_mode(GradMode::Detach, jobs)?.into_iter().collect::<Result<_>>()?;
    Ok(Tensor::cat(&per_task, 0)?)
}
