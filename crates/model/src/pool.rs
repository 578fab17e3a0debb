//! 2x2 max-pool (stride 2, floor mode) as candle custom ops with index-based backward passes
//! that are differentiable to any order.
//!
//! The forward records, for each output, the flat index of the input it took (the first
//! maximum in row-major window order, as PyTorch does). Its backward scatters the incoming
//! gradient to those indices (`Unpool`), whose backward gathers from them (`Gather`), whose
//! backward scatters again: all linear in their input for fixed indices, which is exact since
//! max-pool is piecewise linear.

use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu_op::map_float;

#[derive(Debug, Clone, Copy)]
struct Dims {
    planes: usize,
    h: usize,
    w: usize,
}

impl Dims {
    fn oh(&self) -> usize {
        self.h / 2
    }
    fn ow(&self) -> usize {
        self.w / 2
    }
    fn in_plane(&self) -> usize {
        self.h * self.w
    }
    fn out_plane(&self) -> usize {
        self.oh() * self.ow()
    }
}

struct MaxPool {
    dims: Dims,
    out_shape: Shape,
    /// Within-plane input index of each output's maximum, filled by the forward pass.
    argmax: OnceLock<Arc<Vec<u32>>>,
}

/// Scatter `[planes, oh, ow]` values to their recorded positions in `[planes, h, w]` (zeros elsewhere).
struct Unpool {
    dims: Dims,
    in_shape: Shape,
    argmax: Arc<Vec<u32>>,
}

/// Gather `[planes, h, w]` values at the recorded positions into `[planes, oh, ow]`.
struct Gather {
    dims: Dims,
    out_shape: Shape,
    argmax: Arc<Vec<u32>>,
}

fn pool_slice<T: Copy + PartialOrd + Default + Send + Sync>(src: &[T], d: Dims) -> (Vec<T>, Vec<u32>) {
    let (oh, ow, w) = (d.oh(), d.ow(), d.w);
    let mut out = vec![T::default(); d.planes * d.out_plane()];
    let mut idx = vec![0u32; d.planes * d.out_plane()];
    out.par_chunks_mut(d.out_plane()).zip(idx.par_chunks_mut(d.out_plane())).enumerate().for_each(|(p, (o, ix))| {
        let plane = &src[p * d.in_plane()..(p + 1) * d.in_plane()];
        for oy in 0..oh {
            for ox in 0..ow {
                let base = 2 * oy * w + 2 * ox;
                let mut best = base;
                for cand in [base + 1, base + w, base + w + 1] {
                    if plane[cand] > plane[best] {
                        best = cand;
                    }
                }
                o[oy * ow + ox] = plane[best];
                ix[oy * ow + ox] = best as u32;
            }
        }
    });
    (out, idx)
}

/// Store a kernel's indices aside and return its values.
fn keep_indices<T>((values, indices): (Vec<T>, Vec<u32>), slot: &std::sync::Mutex<Vec<u32>>) -> Vec<T> {
    *slot.lock().expect("not poisoned") = indices;
    values
}

fn unpool_slice<T: Copy + Default + Send + Sync>(src: &[T], idx: &[u32], d: Dims) -> Vec<T> {
    let mut out = vec![T::default(); d.planes * d.in_plane()];
    out.par_chunks_mut(d.in_plane()).enumerate().for_each(|(p, o)| {
        let range = p * d.out_plane()..(p + 1) * d.out_plane();
        for (&i, &v) in idx[range.clone()].iter().zip(&src[range]) {
            o[i as usize] = v;
        }
    });
    out
}

fn gather_slice<T: Copy + Default + Send + Sync>(src: &[T], idx: &[u32], d: Dims) -> Vec<T> {
    let mut out = vec![T::default(); d.planes * d.out_plane()];
    out.par_chunks_mut(d.out_plane()).enumerate().for_each(|(p, o)| {
        let plane = &src[p * d.in_plane()..(p + 1) * d.in_plane()];
        for (dst, &i) in o.iter_mut().zip(&idx[p * d.out_plane()..(p + 1) * d.out_plane()]) {
            *dst = plane[i as usize];
        }
    });
    out
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max_pool2x2"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        // The kernels return values and indices; keep the indices aside for the backward.
        let idx = std::sync::Mutex::new(Vec::new());
        let out = map_float(
            storage,
            layout,
            "max_pool2x2",
            |v| keep_indices(pool_slice(v, self.dims), &idx),
            |v| keep_indices(pool_slice(v, self.dims), &idx),
        )?;
        let idx = idx.into_inner().expect("not poisoned");
        let _ = self.argmax.set(Arc::new(idx));
        Ok((out, self.out_shape.clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let argmax = self.argmax.get().expect("forward ran before backward").clone();
        let op = Unpool { dims: self.dims, in_shape: arg.shape().clone(), argmax };
        Ok(Some(grad_res.contiguous()?.apply_op1(op)?))
    }
}

impl CustomOp1 for Unpool {
    fn name(&self) -> &'static str {
        "max_unpool2x2"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = map_float(
            storage,
            layout,
            "max_unpool2x2",
            |v| unpool_slice(v, &self.argmax, self.dims),
            |v| unpool_slice(v, &self.argmax, self.dims),
        )?;
        Ok((out, self.in_shape.clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let out_shape = Shape::from(pooled_dims(res.dims()));
        let op = Gather { dims: self.dims, out_shape, argmax: self.argmax.clone() };
        Ok(Some(grad_res.contiguous()?.apply_op1(op)?))
    }
}

impl CustomOp1 for Gather {
    fn name(&self) -> &'static str {
        "max_gather2x2"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = map_float(
            storage,
            layout,
            "max_gather2x2",
            |v| gather_slice(v, &self.argmax, self.dims),
            |v| gather_slice(v, &self.argmax, self.dims),
        )?;
        Ok((out, self.out_shape.clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let op = Unpool { dims: self.dims, in_shape: arg.shape().clone(), argmax: self.argmax.clone() };
        Ok(Some(grad_res.contiguous()?.apply_op1(op)?))
    }
}

fn pooled_dims(dims: &[usize]) -> Vec<usize> {
    let mut d = dims.to_vec();
    let n = d.len();
    d[n - 2] /= 2;
    d[n - 1] /= 2;
    d
}

/// 2x2 max-pool, stride 2, floor mode, over the last two dims, differentiable to any order.
///
/// # Shapes
/// `x`: `[..., h, w]`; returns `[..., h / 2, w / 2]`.
pub fn max_pool2x2_op(x: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let n = dims.len();
    if n < 2 || dims[n - 1] < 2 || dims[n - 2] < 2 {
        candle_core::bail!("max_pool2x2: input {dims:?} is smaller than 2x2");
    }
    let planes = dims[..n - 2].iter().product();
    let d = Dims { planes, h: dims[n - 2], w: dims[n - 1] };
    let op = MaxPool { dims: d, out_shape: Shape::from(pooled_dims(dims)), argmax: OnceLock::new() };
    x.contiguous()?.apply_op1(op)
}
