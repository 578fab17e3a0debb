//! Shared plumbing of this crate's CPU custom ops.

use candle_core::{CpuStorage, Layout, Result};

/// Apply the f32 or f64 kernel to a contiguous input; other dtypes are an error naming `op`.
pub(crate) fn map_float(
    storage: &CpuStorage,
    layout: &Layout,
    op: &str,
    f32_kernel: impl Fn(&[f32]) -> Vec<f32>,
    f64_kernel: impl Fn(&[f64]) -> Vec<f64>,
) -> Result<CpuStorage> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{op}: input must be contiguous");
    };
    match storage {
        CpuStorage::F32(v) => Ok(CpuStorage::F32(f32_kernel(&v[start..end]))),
        CpuStorage::F64(v) => Ok(CpuStorage::F64(f64_kernel(&v[start..end]))),
        _ => candle_core::bail!("{op}: only f32 and f64 are supported"),
    }
}
