//! 3x3, pad 1 im2col and its adjoint col2im as candle custom ops whose backward passes are
//! each other, so a conv built on them is differentiable to any order.
//!
//! Both are linear maps, so their backward passes need neither input nor output: the gradient
//! of im2col is col2im of the incoming gradient, and vice versa.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::cpu_op::map_float;

/// Layout of the image tensor both ops work on: `[t, c, b, h, w]`.
#[derive(Debug, Clone, Copy)]
struct Dims {
    t: usize,
    c: usize,
    b: usize,
    h: usize,
    w: usize,
}

impl Dims {
    fn plane(&self) -> usize {
        self.b * self.h * self.w
    }
}

/// `[t, c, b, h, w]` -> `[t, c * 9, b * h * w]`; row `c * 9 + dy * 3 + dx` holds the image
/// shifted by `(dy - 1, dx - 1)` with zeros outside.
struct Im2Col(Dims);

/// The adjoint: `[t, c * 9, b * h * w]` -> `[t, c, b, h, w]`, summing each shifted row back.
struct Col2Im(Dims);

fn im2col_slice<T: Copy + Default + Send + Sync>(src: &[T], d: Dims) -> Vec<T> {
    let plane = d.plane();
    let mut out = vec![T::default(); d.t * d.c * 9 * plane];
    out.par_chunks_mut(plane).enumerate().for_each(|(row, dst)| {
        let (tc, k) = (row / 9, row % 9);
        let (dy, dx) = ((k / 3) as isize - 1, (k % 3) as isize - 1);
        let img = &src[tc * plane..(tc + 1) * plane];
        for b in 0..d.b {
            for y in 0..d.h {
                let sy = y as isize + dy;
                let dst_row = &mut dst[(b * d.h + y) * d.w..(b * d.h + y + 1) * d.w];
                if sy < 0 || sy >= d.h as isize {
                    continue; // stays zero
                }
                let src_row = &img[(b * d.h + sy as usize) * d.w..(b * d.h + sy as usize + 1) * d.w];
                match dx {
                    0 => dst_row.copy_from_slice(src_row),
                    -1 => dst_row[1..].copy_from_slice(&src_row[..d.w - 1]),
                    _ => dst_row[..d.w - 1].copy_from_slice(&src_row[1..]),
                }
            }
        }
    });
    out
}

fn col2im_slice<T: Copy + Default + Send + Sync + std::ops::AddAssign>(src: &[T], d: Dims) -> Vec<T> {
    let plane = d.plane();
    let mut out = vec![T::default(); d.t * d.c * plane];
    out.par_chunks_mut(plane).enumerate().for_each(|(tc, dst)| {
        for k in 0..9 {
            let (dy, dx) = ((k / 3) as isize - 1, (k % 3) as isize - 1);
            let col = &src[(tc * 9 + k) * plane..(tc * 9 + k + 1) * plane];
            for b in 0..d.b {
                for y in 0..d.h {
                    let sy = y as isize + dy;
                    if sy < 0 || sy >= d.h as isize {
                        continue;
                    }
                    let col_row = &col[(b * d.h + y) * d.w..(b * d.h + y + 1) * d.w];
                    let dst_row = &mut dst[(b * d.h + sy as usize) * d.w..(b * d.h + sy as usize + 1) * d.w];
                    // col[y][x] = img[y + dy][x + dx]: scatter back.
                    match dx {
                        0 => dst_row.iter_mut().zip(col_row).for_each(|(o, &v)| *o += v),
                        -1 => dst_row[..d.w - 1].iter_mut().zip(&col_row[1..]).for_each(|(o, &v)| *o += v),
                        _ => dst_row[1..].iter_mut().zip(&col_row[..d.w - 1]).for_each(|(o, &v)| *o += v),
                    }
                }
            }
        }
    });
    out
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col3x3"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = self.0;
        let shape = Shape::from((d.t, d.c * 9, d.plane()));
        let out = map_float(storage, layout, "im2col", |v| im2col_slice(v, d), |v| im2col_slice(v, d))?;
        Ok((out, shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1(Col2Im(self.0))?))
    }
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im3x3"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = self.0;
        let shape = Shape::from((d.t, d.c, d.b, d.h, d.w));
        let out = map_float(storage, layout, "col2im", |v| col2im_slice(v, d), |v| col2im_slice(v, d))?;
        Ok((out, shape))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad_res.contiguous()?.apply_op1(Im2Col(self.0))?))
    }
}

/// im2col for a 3x3 kernel, stride 1, zero padding 1, differentiable to any order.
///
/// # Shapes
/// `x`: `[t, c, b, h, w]`; returns `[t, c * 9, b * h * w]`.
pub fn im2col3x3(x: &Tensor) -> Result<Tensor> {
    let (t, c, b, h, w) = x.dims5()?;
    x.contiguous()?.apply_op1(Im2Col(Dims { t, c, b, h, w }))
}

/// im2col by padding, shifting and stacking: plain candle ops, slower and hungrier, kept as an
/// independent reference for [`im2col3x3`].
///
/// # Shapes
/// `x`: `[t, c, b, h, w]`; returns `[t, c * 9, b * h * w]`.
pub fn im2col3x3_reference(x: &Tensor) -> Result<Tensor> {
    let (t, c, b, h, w) = x.dims5()?;
    let padded = x.pad_with_zeros(3, 1, 1)?.pad_with_zeros(4, 1, 1)?; // [t, c, b, h+2, w+2]
    let mut shifted = Vec::with_capacity(9);
    for dy in 0..3 {
        for dx in 0..3 {
            shifted.push(padded.narrow(3, dy, h)?.narrow(4, dx, w)?);
        }
    }
    Tensor::stack(&shifted, 2)?.reshape((t, c * 9, b * h * w)) // [t, c*9, b*h*w]
}
