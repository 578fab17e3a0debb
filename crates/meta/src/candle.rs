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
use crate::rates::{RateTable, rate_name, split_rates};
use crate::settings::{Adaptation, InnerLoop, Order, Scope};
use crate::workers::Job;

/// Adapt `params` to each task's support set with `inner.steps` SGD steps (of the learned
/// rates when `params` holds them, see [`crate::rates`]; the fast weights are the net's only).
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
    params: &ParamMap,
    support_images: &Tensor,
    support_labels: &Tensor,
    inner: &InnerLoop,
) -> Result<ParamMap> {
    adapt_scoped(config, params, support_images, support_labels, inner, Scope::All)
}

/// [`adapt`] updating only the parameters in `scope` (the others keep their values).
fn adapt_scoped(
    config: &ConvNetConfig,
    params: &ParamMap,
    support_images: &Tensor,
    support_labels: &Tensor,
    inner: &InnerLoop,
    scope: Scope,
) -> Result<ParamMap> {
    inner.validate()?;
    if crate::bn_steps::has_bn_steps(params) {
        return Err(Error::InvalidSetting {
            name: "bn_step",
            value: "per-step batch-norm sets".into(),
            expected: "none for the candle engine (per-step batch norm is the native engine's)".into(),
        });
    }
    let (net, rates) = split_rates(params);
    let learned = RateTable::from_map(config, &rates)?;
    let t = support_images.dim(0)?;
    let mut fast = expand(&net, t)?;
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
                    Some(table) => g.broadcast_mul(&rates[&rate_name(k)].narrow(0, table.step_index(step), 1)?)?,
                };
                Ok((k.clone(), (w - update)?))
            })
            .collect::<Result<_>>()?;
    }
    Ok(fast)
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
    params: &ParamMap,
    batch: &TaskBatch,
    inner: &InnerLoop,
    task_chunk: usize,
) -> Result<(ParamMap, StepStats)> {
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
    let vars = ParamVars::new(params)?;
    let t = batch.n_tasks();
    let jobs: Vec<Job<Result<(ParamMap, f64, f64)>>> = (0..t)
        .step_by(task_chunk)
        .map(|start| -> Result<Job<Result<(ParamMap, f64, f64)>>> {
            let chunk = batch.narrow(start, task_chunk.min(t - start))?;
            let (config, vars, inner) = (*config, vars.clone(), *inner);
            Ok(Box::new(move || chunk_meta_gradient(&config, &vars, &chunk, &inner, t)))
        })
        .collect::<Result<_>>()?;
    let per_chunk: Vec<(ParamMap, f64, f64)> =
        run_in_mode(grad_mode(inner.order), jobs)?.into_iter().collect::<Result<_>>()?;
    let (mut loss_sum, mut acc_sum) = (0f64, 0f64);
    let mut sum: Option<ParamMap> = None;
    for (grads, l, a) in per_chunk {
        loss_sum += l;
        acc_sum += a;
        sum = Some(match sum {
            None => grads,
            Some(acc) => acc.iter().map(|(k, v)| Ok((k.clone(), (v + &grads[k])?))).collect::<Result<_>>()?,
        });
    }
    let grads = sum.expect("a batch has at least one task");
    Ok((grads, StepStats { loss: (loss_sum / t as f64) as f32, accuracy: (acc_sum / t as f64) as f32 }))
}

/// One chunk's share of the meta-gradient (its loss divided by the batch's `t` tasks), with
/// its summed loss and accuracy.
fn chunk_meta_gradient(
    config: &ConvNetConfig,
    vars: &ParamVars,
    chunk: &TaskBatch,
    inner: &InnerLoop,
    t: usize,
) -> Result<(ParamMap, f64, f64)> {
    let fast = adapt(config, &vars.tensors(), &chunk.support_images, &chunk.support_labels, inner)?;
    let logits = forward(config, &fast, &chunk.query_images)?;
    let losses = cross_entropy(&logits, &chunk.query_labels)?; // [chunk]
    let loss_sum = losses.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    let acc_sum = accuracy(&logits, &chunk.query_labels)?.sum_all()?.to_scalar::<f32>()? as f64;
    if !loss_sum.is_finite() {
        return Err(Error::NonFinite(loss_sum as f32));
    }
    let grads = backward(&(losses.sum_all()? / t as f64)?, GradMode::Detach)?;
    let mut out = ParamMap::new();
    for (name, var) in vars.iter() {
        let g = match grads.get(var.as_tensor()) {
            Some(g) => g.detach(),
            None => var.as_tensor().zeros_like()?, // the loss does not depend on it
        };
        out.insert(name.clone(), g);
    }
    Ok((out, loss_sum, acc_sum))
}

/// Query logits `[t, n_query, n_way]` after adapting to each task's support set: tasks one
/// at a time (small computations keep activations in cache on the CPU; see
/// docs/performance.md), in parallel on the detached workers, concatenated in task order.
pub(crate) fn adapted_logits(
    config: &ConvNetConfig,
    params: &ParamMap,
    tasks: TaskInputs<'_>,
    adaptation: &Adaptation,
) -> Result<Tensor> {
    adaptation.validate()?;
    let detached: ParamMap = params.iter().map(|(k, v)| (k.clone(), v.detach())).collect();
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
