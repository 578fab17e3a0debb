//! MAML on the native engine ([`fewshot_model::engine`]): the fast path behind [`crate::Maml`]
//! and [`crate::evaluate_batch`]. Same mathematics as the candle path ([`crate::meta_gradient`],
//! [`crate::adapt`]): tests hold the two to each other and to finite differences.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use fewshot_model::engine::{self, Layout, Real, TaskData};
use fewshot_model::{ConvNetConfig, ParamMap};

use crate::batch::TaskBatch;
use crate::error::{Error, Result};
use crate::eval::{Adaptation, Scope};
use crate::grad_mode::{GradMode, ParallelJob, run_parallel};
use crate::maml::{InnerLoop, Order, StepStats};

/// Which implementation runs the inner and outer loops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Engine {
    /// Hand-written forward, backward and Hessian-vector products on flat buffers (f32 or f64
    /// on the CPU); tasks in parallel. The default.
    #[default]
    Native,
    /// candle's autograd over [`fewshot_model::forward`]: the simple reference path, and the
    /// one for other devices or dtypes.
    Candle,
}

impl Engine {
    /// Whether the native engine can run a batch of `dtype` on `device`.
    pub fn native_supports(dtype: DType, device: &Device) -> bool {
        device.is_cpu() && matches!(dtype, DType::F32 | DType::F64)
    }
}

/// A batch's pixels and labels as flat per-task buffers, channels last.
struct FlatBatch<T> {
    n_support: usize,
    n_query: usize,
    support: Vec<T>,
    support_labels: Vec<u32>,
    query: Vec<T>,
    query_labels: Vec<u32>,
}

impl<T: Real> FlatBatch<T> {
    /// Flatten support and query sets; `query_labels` may be absent (adaptation only).
    fn new(
        layout: &Layout,
        support_images: &Tensor,
        support_labels: &Tensor,
        query_images: &Tensor,
        query_labels: Option<&Tensor>,
    ) -> Result<FlatBatch<T>> {
        let images = |t: &Tensor| -> Result<Vec<T>> {
            let (_, _, c, h, w) = t.dims5()?;
            layout.config().check_image(c, h, w)?;
            Ok(layout.images_to_channels_last(&T::tensor_values(t)?))
        };
        let labels = |t: &Tensor| -> Result<Vec<u32>> { Ok(t.flatten_all()?.to_vec1::<u32>()?) };
        let flat = FlatBatch {
            n_support: support_images.dim(1)?,
            n_query: query_images.dim(1)?,
            support: images(support_images)?,
            support_labels: labels(support_labels)?,
            query: images(query_images)?,
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

    fn from_batch(layout: &Layout, batch: &TaskBatch) -> Result<FlatBatch<T>> {
        let b = batch;
        FlatBatch::new(layout, &b.support_images, &b.support_labels, &b.query_images, Some(&b.query_labels))
    }

    fn task(&self, i: usize, image_len: usize) -> TaskData<'_, T> {
        let (s, q) = (self.n_support, self.n_query);
        TaskData {
            support: &self.support[i * s * image_len..(i + 1) * s * image_len],
            support_labels: &self.support_labels[i * s..(i + 1) * s],
            query: &self.query[i * q * image_len..(i + 1) * q * image_len],
            query_labels: self.query_labels.get(i * q..(i + 1) * q).unwrap_or(&[]),
        }
    }
}

/// [`crate::meta_gradient`] on the native engine: the gradient of the batch's mean query loss
/// after adaptation with respect to `params`, exact to the second order with
/// [`Order::Second`]. Tasks run in parallel on the workers set by
/// [`crate::set_parallel_tasks`] and are summed in task order, so the result does not depend
/// on scheduling. Computes in the dtype of the batch's images (f32 or f64).
pub fn native_meta_gradient(
    config: &ConvNetConfig,
    params: &ParamMap,
    batch: &TaskBatch,
    inner: &InnerLoop,
) -> Result<(ParamMap, StepStats)> {
    inner.validate()?;
    match batch.support_images.dtype() {
        DType::F32 => meta_gradient_typed::<f32>(config, params, batch, inner),
        DType::F64 => meta_gradient_typed::<f64>(config, params, batch, inner),
        other => Err(unsupported(other)),
    }
}

fn unsupported(dtype: DType) -> Error {
    Error::InvalidSetting {
        name: "dtype",
        value: format!("{dtype:?}"),
        expected: "f32 or f64 for the native engine (use Engine::Candle for others)".into(),
    }
}

fn meta_gradient_typed<T: Real>(
    config: &ConvNetConfig,
    params: &ParamMap,
    batch: &TaskBatch,
    inner: &InnerLoop,
) -> Result<(ParamMap, StepStats)> {
    let layout = Arc::new(Layout::new(config)?);
    let theta: Arc<Vec<T>> = Arc::new(layout.pack(params)?);
    let flat = Arc::new(FlatBatch::<T>::from_batch(&layout, batch)?);
    let t = batch.n_tasks();
    let inner = *inner;
    let jobs: Vec<ParallelJob<engine::TaskOutcome<T>>> = (0..t)
        .map(|i| -> ParallelJob<engine::TaskOutcome<T>> {
            let (layout, theta, flat) = (layout.clone(), theta.clone(), flat.clone());
            Box::new(move || {
                let task = flat.task(i, layout.image_len());
                let second = inner.order == Order::Second;
                engine::task_meta_gradient(&layout, &theta, &task, inner.inner_lr, inner.steps, second)
            })
        })
        .collect();
    let outcomes = run_parallel(GradMode::Detach, jobs)?;
    let (mut loss, mut correct) = (0f64, 0usize);
    let mut sum = vec![0f64; layout.len()];
    // Summed in task order, in f64, so the result does not depend on scheduling.
    for o in &outcomes {
        loss += o.loss;
        correct += o.correct;
        sum.iter_mut().zip(&o.grad).for_each(|(s, g)| *s += g.to_f64());
    }
    if !loss.is_finite() {
        return Err(Error::NonFinite(loss as f32));
    }
    let mean: Vec<T> = sum.iter().map(|s| T::from_f64(s / t as f64)).collect();
    let grads = layout.unpack(&mean, params.values().next().map_or(T::DTYPE, |p| p.dtype()), &Device::Cpu)?;
    let stats =
        StepStats { loss: (loss / t as f64) as f32, accuracy: (correct as f64 / (t * flat.n_query) as f64) as f32 };
    Ok((grads, stats))
}

/// Query logits `[t, n_query, n_way]` of each task after `steps` inner SGD steps, on the native
/// engine (see [`crate::adapted_logits`] for the shapes).
pub fn native_adapted_logits(
    config: &ConvNetConfig,
    params: &ParamMap,
    support_images: &Tensor,
    support_labels: &Tensor,
    query_images: &Tensor,
    adaptation: &Adaptation,
) -> Result<Tensor> {
    let args = (support_images, support_labels, query_images);
    match support_images.dtype() {
        DType::F32 => adapted_logits_typed::<f32>(config, params, args, adaptation),
        DType::F64 => adapted_logits_typed::<f64>(config, params, args, adaptation),
        other => Err(unsupported(other)),
    }
}

fn adapted_logits_typed<T: Real>(
    config: &ConvNetConfig,
    params: &ParamMap,
    (support_images, support_labels, query_images): (&Tensor, &Tensor, &Tensor),
    adaptation: &Adaptation,
) -> Result<Tensor> {
    let Adaptation { inner_lr, steps, scope } = *adaptation;
    InnerLoop { inner_lr, steps, order: Order::First }.validate()?;
    let layout = Arc::new(Layout::new(config)?);
    let theta: Arc<Vec<T>> = Arc::new(layout.pack(params)?);
    let flat = Arc::new(FlatBatch::<T>::new(&layout, support_images, support_labels, query_images, None)?);
    let t = support_images.dim(0)?;
    let jobs: Vec<ParallelJob<Vec<T>>> = (0..t)
        .map(|i| -> ParallelJob<Vec<T>> {
            let (layout, theta, flat) = (layout.clone(), theta.clone(), flat.clone());
            Box::new(move || {
                let task = flat.task(i, layout.image_len());
                let (lr, n_query) = (inner_lr, flat.n_query);
                engine::adapted_logits(
                    &layout,
                    &theta,
                    task.support,
                    task.support_labels,
                    task.query,
                    n_query,
                    lr,
                    steps,
                    scope == Scope::Head,
                )
            })
        })
        .collect();
    let logits: Vec<f64> = run_parallel(GradMode::Detach, jobs)?.into_iter().flatten().map(|v| v.to_f64()).collect();
    let out = Tensor::from_vec(logits, (t, flat.n_query, config.n_way), &Device::Cpu)?;
    Ok(out.to_dtype(T::DTYPE)?)
}
