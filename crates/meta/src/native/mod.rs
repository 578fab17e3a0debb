//! MAML on the native engine ([`fewshot_model::engine`]): the fast path behind
//! [`crate::Engine::Native`]. A batch is flattened to per-task buffers ([`FlatBatch`]); each
//! task runs on one worker thread ([`crate::workers`]) through [`task`]; results are combined
//! in task order. Same mathematics as the candle path ([`crate::candle`]): tests hold the two
//! to each other and to finite differences.

mod prototypes;
mod task;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use fewshot_model::engine::{Layout, Real};
use fewshot_model::{ConvNetConfig, ParamRole, param_specs};

use crate::StepStats;
use crate::batch::{TaskBatch, TaskInputs};
use crate::bn_steps::BnStepTable;
use crate::distributed;
use crate::error::{Error, Result};
use crate::meta_params::MetaParams;
use crate::rates::RateTable;
use crate::settings::{Adaptation, InnerLoop};
use crate::workers::{self, Job};
use task::{BnSets, StepSizes, TaskData, TaskOutcome, task_adapted_logits, task_meta_gradient};

/// Whether the native engine can run a batch of `dtype` on `device`.
pub(crate) fn supports(dtype: DType, device: &Device) -> bool {
    device.is_cpu() && matches!(dtype, DType::F32 | DType::F64)
}

/// A batch's pixels and labels as flat per-task buffers, channels last.
struct FlatBatch<T> {
    image_len: usize,
    n_support: usize,
    n_query: usize,
    support: Vec<T>,
    support_labels: Vec<u32>,
    query: Vec<T>,
    query_labels: Vec<u32>,
}

impl<T: Real> FlatBatch<T> {
    /// Flatten support and query sets; `query_labels` may be absent (adaptation only).
    fn new(layout: &Layout, tasks: TaskInputs<'_>, query_labels: Option<&Tensor>) -> Result<FlatBatch<T>> {
        let images = |t: &Tensor| -> Result<Vec<T>> {
            let (_, _, c, h, w) = t.dims5()?;
            layout.config().check_image(c, h, w)?;
            Ok(layout.images_to_channels_last(&T::tensor_values(t)?))
        };
        let labels = |t: &Tensor| -> Result<Vec<u32>> { Ok(t.flatten_all()?.to_vec1::<u32>()?) };
        let flat = FlatBatch {
            image_len: layout.image_len(),
            n_support: tasks.support_images.dim(1)?,
            n_query: tasks.query_images.dim(1)?,
            support: images(tasks.support_images)?,
            support_labels: labels(tasks.support_labels)?,
            query: images(tasks.query_images)?,
            query_labels: query_labels.map(labels).transpose()?.unwrap_or_default(),
        };
        let n_way = layout.config().n_way as u32;
        if let Some(bad) = flat.support_labels.iter().chain(&flat.query_labels).find(|&&y| y >= n_way) {
            return Err(Error::InvalidSetting {
                name: "label",
                value: bad.to_string(),
                expected: format!("a class index below n_way = {n_way}"),
            });
        }
        Ok(flat)
    }

    /// Task `i`'s slices.
    fn task(&self, i: usize) -> TaskData<'_, T> {
        let (s, q, len) = (self.n_support, self.n_query, self.image_len);
        TaskData {
            support: &self.support[i * s * len..(i + 1) * s * len],
            support_labels: &self.support_labels[i * s..(i + 1) * s],
            query: &self.query[i * q * len..(i + 1) * q * len],
            query_labels: self.query_labels.get(i * q..(i + 1) * q).unwrap_or(&[]),
            n_query: q,
        }
    }
}

/// What a meta-learner's parameters become on the native engine.
struct Prepared<T> {
    layout: Arc<Layout>,
    /// The net's parameters, packed.
    theta: Arc<Vec<T>>,
    sizes: Arc<StepSizes<T>>,
    bn: Option<Arc<BnSets<T>>>,
    rates: Option<RateTable>,
    bn_table: Option<BnStepTable>,
}

/// Lay out the net's parameters, learned rates and per-step batch-norm sets: the inner loop's
/// step sizes are the learned rates when there are some, else `inner_lr`; with per-step batch
/// norm, zero for the batch-norm parameters.
fn prepare<T: Real>(config: &ConvNetConfig, params: &MetaParams, inner_lr: f64) -> Result<Prepared<T>> {
    let rates = params.rates.as_ref().map(|r| RateTable::from_map(config, r)).transpose()?;
    let bn_table = params.bn_steps.as_ref().map(|s| BnStepTable::from_map(config, s)).transpose()?;
    let layout = Layout::new(config)?;
    let theta = layout.pack(&params.net)?;
    let specs = param_specs(config);
    let frozen = |role: ParamRole| bn_table.is_some() && matches!(role, ParamRole::BnScale(_) | ParamRole::BnShift(_));
    let sizes = match (&rates, &bn_table) {
        (None, None) => StepSizes::Uniform(T::from_f64(inner_lr)),
        _ => {
            let steps = rates.as_ref().map_or(1, |r| r.steps);
            let ranges: Vec<_> = specs.iter().map(|s| layout.range(s.role).filter(|_| !frozen(s.role))).collect();
            let per_step = (0..steps)
                .map(|s| {
                    let mut lr = vec![T::default(); layout.len()];
                    for (p, r) in ranges.iter().enumerate() {
                        if let Some(r) = r {
                            let rate = rates.as_ref().map_or(inner_lr, |t| t.values[p][s]);
                            lr[r.clone()].fill(T::from_f64(rate));
                        }
                    }
                    lr
                })
                .collect();
            StepSizes::PerParameter { per_step, learned: rates.is_some().then_some(ranges) }
        }
    };
    let bn = bn_table.as_ref().map(|table| {
        let ranges: Vec<_> =
            table.roles.iter().map(|&role| layout.range(role).expect("batch norm is stored")).collect();
        let sets = (0..table.steps)
            .map(|s| {
                let hidden = config.hidden;
                table
                    .values
                    .iter()
                    .flat_map(|v| v[s * hidden..(s + 1) * hidden].iter().map(|&x| T::from_f64(x)))
                    .collect()
            })
            .collect();
        Arc::new(BnSets { sets, ranges })
    });
    Ok(Prepared { layout: Arc::new(layout), theta: Arc::new(theta), sizes: Arc::new(sizes), bn, rates, bn_table })
}

/// Prototypes are read at the initial parameters, per-step batch norm has a set per step: the
/// two are not combined (the prototypes' pass would need set 0's slots and their gradient).
fn refuse_prototypes_with_bn_steps(prototypes: bool, params: &MetaParams) -> Result<()> {
    if prototypes && params.bn_steps.is_some() {
        return Err(Error::InvalidSetting {
            name: "head_init",
            value: "prototypes".into(),
            expected: "another head with per-step batch norm (the two are not combined)".into(),
        });
    }
    Ok(())
}

fn unsupported(dtype: DType) -> Error {
    Error::InvalidSetting {
        name: "dtype",
        value: format!("{dtype:?}"),
        expected: "f32 or f64 for the native engine (use Engine::Candle for others)".into(),
    }
}

/// The gradient of the batch's mean query loss after adaptation with respect to `params`,
/// exact to the second order with [`crate::Order::Second`]. Tasks run in parallel and are
/// summed in task order, in f64, so the result does not depend on scheduling. Computes in the
/// dtype of the batch's images (f32 or f64).
pub(crate) fn meta_gradient(
    config: &ConvNetConfig,
    params: &MetaParams,
    batch: &TaskBatch,
    inner: &InnerLoop,
) -> Result<(MetaParams, StepStats)> {
    inner.validate()?;
    refuse_prototypes_with_bn_steps(inner.prototypes, params)?;
    match batch.support_images.dtype() {
        DType::F32 => meta_gradient_typed::<f32>(config, params, batch, inner),
        DType::F64 => meta_gradient_typed::<f64>(config, params, batch, inner),
        other => Err(unsupported(other)),
    }
}

fn meta_gradient_typed<T: Real>(
    config: &ConvNetConfig,
    params: &MetaParams,
    batch: &TaskBatch,
    inner: &InnerLoop,
) -> Result<(MetaParams, StepStats)> {
    let Prepared { layout, theta, sizes, bn, rates, bn_table } = prepare::<T>(config, params, inner.inner_lr)?;
    let flat = Arc::new(FlatBatch::<T>::new(&layout, batch.inputs(), Some(&batch.query_labels))?);
    let t = batch.n_tasks();
    let inner = *inner;
    let group = distributed::current();
    let mine = group.as_ref().map_or(0..t, |g| distributed::share(t, g.rank(), g.size()));
    let jobs: Vec<Job<TaskOutcome<T>>> = mine
        .map(|i| -> Job<TaskOutcome<T>> {
            let (layout, theta, flat, sizes, bn) =
                (layout.clone(), theta.clone(), flat.clone(), sizes.clone(), bn.clone());
            Box::new(move || task_meta_gradient(&layout, &theta, &flat.task(i), &inner, &sizes, bn.as_deref()))
        })
        .collect();
    let outcomes = workers::plain()?.run(jobs)?;
    // One buffer, summed in task order in f64: [loss, correct, net gradient, rates, batch norm].
    let (n_net, n_rates) = (layout.len(), rates.as_ref().map_or(0, |r| r.values.len() * r.steps));
    let n_bn = bn.as_ref().map_or(0, |bn| bn.sets.len() * bn.sets[0].len());
    let mut sum = vec![0f64; 2 + n_net + n_rates + n_bn];
    // Each element gets the tasks' terms in task order (one process's order; see
    // `distributed::ordered_sum` for the same sum over ranks, segment by segment).
    let add = |segment: &mut [f64], offset: usize| {
        use distributed::add_block;
        for o in &outcomes {
            add_block(segment, offset, 0, &[o.loss, o.correct as f64], |v| v);
            add_block(segment, offset, 2, &o.grad, |g| g.to_f64());
            add_block(segment, offset, 2 + n_net, &o.rate_grad, |v| v);
            add_block(segment, offset, 2 + n_net + n_rates, &o.bn_grad, |v| v);
        }
    };
    match &group {
        Some(g) => distributed::ordered_sum(&**g, &mut sum, add)?,
        None => add(&mut sum, 0),
    }
    let (loss, correct) = (sum[0], sum[1] as usize);
    let (sum, rest) = sum[2..].split_at(n_net);
    let (rate_sum, bn_sum) = rest.split_at(n_rates);
    let mean_of = |sums: &[f64]| sums.iter().map(|s| s / t as f64).collect::<Vec<f64>>();
    if !loss.is_finite() {
        return Err(Error::NonFinite(loss as f32));
    }
    let mean: Vec<T> = sum.iter().map(|s| T::from_f64(s / t as f64)).collect();
    let dtype = params.net.values().next().map_or(T::DTYPE, |p| p.dtype());
    let mut grads = MetaParams::from(layout.unpack(&mean, dtype, &Device::Cpu)?);
    if let Some(table) = &rates {
        grads.rates = Some(table.gradients(config, &mean_of(rate_sum), dtype)?);
    }
    if let Some(table) = &bn_table {
        grads.bn_steps = Some(table.gradients(config, &mean_of(bn_sum), dtype)?);
    }
    let stats =
        StepStats { loss: (loss / t as f64) as f32, accuracy: (correct as f64 / (t * flat.n_query) as f64) as f32 };
    Ok((grads, stats))
}

/// Query logits `[t, n_query, n_way]` of each task after adapting as `adaptation` says.
pub(crate) fn adapted_logits(
    config: &ConvNetConfig,
    params: &MetaParams,
    tasks: TaskInputs<'_>,
    adaptation: &Adaptation,
) -> Result<Tensor> {
    adaptation.validate()?;
    refuse_prototypes_with_bn_steps(adaptation.prototypes, params)?;
    match tasks.support_images.dtype() {
        DType::F32 => adapted_logits_typed::<f32>(config, params, tasks, adaptation),
        DType::F64 => adapted_logits_typed::<f64>(config, params, tasks, adaptation),
        other => Err(unsupported(other)),
    }
}

fn adapted_logits_typed<T: Real>(
    config: &ConvNetConfig,
    params: &MetaParams,
    tasks: TaskInputs<'_>,
    adaptation: &Adaptation,
) -> Result<Tensor> {
    let Prepared { layout, theta, sizes, bn, .. } = prepare::<T>(config, params, adaptation.inner_lr)?;
    let flat = Arc::new(FlatBatch::<T>::new(&layout, tasks, None)?);
    let t = tasks.n_tasks();
    let adaptation = *adaptation;
    let group = distributed::current();
    let mine = group.as_ref().map_or(0..t, |g| distributed::share(t, g.rank(), g.size()));
    let jobs: Vec<Job<Vec<T>>> = mine
        .map(|i| -> Job<Vec<T>> {
            let (layout, theta, flat, sizes, bn) =
                (layout.clone(), theta.clone(), flat.clone(), sizes.clone(), bn.clone());
            Box::new(move || task_adapted_logits(&layout, &theta, &flat.task(i), &adaptation, &sizes, bn.as_deref()))
        })
        .collect();
    let mut logits: Vec<f64> = workers::plain()?.run(jobs)?.into_iter().flatten().map(|v| v.to_f64()).collect();
    if let Some(g) = &group {
        let per_task = flat.n_query * config.n_way;
        let counts: Vec<usize> = (0..g.size()).map(|r| distributed::share(t, r, g.size()).len() * per_task).collect();
        logits = distributed::all_gather(&**g, &logits, &counts)?;
    }
    let out = Tensor::from_vec(logits, (t, flat.n_query, config.n_way), &Device::Cpu)?;
    Ok(out.to_dtype(T::DTYPE)?)
}
