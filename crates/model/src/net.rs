//! The conv net as a pure function of its parameters, batched over tasks.

use crate::error::{Error, Result};
use crate::params::{ParamMap, block_param};
use crate::shape::ConvNetConfig;
use candle_core::{D, DType, Tensor};

/// Batch-norm epsilon (PyTorch's default).
pub const BN_EPS: f64 = 1e-5;

/// Logits of a batch of tasks, each with its own parameters.
///
/// # Shapes
/// - `params`: every tensor has a leading task dimension `t` (see [`crate::expand`]).
/// - `images`: `[t, b, in_channels, image_size, image_size]`.
/// - returns `[t, b, n_way]`.
///
/// Batch norm normalises each task's batch with that batch's own statistics (no running
/// averages), as MAML does. Every op is differentiable twice in candle (no `max_pool2d`, no
/// `softmax_last_dim`; see `docs/architecture.md`).
pub fn forward(config: &ConvNetConfig, params: &ParamMap, images: &Tensor) -> Result<Tensor> {
    let x = features(config, params, images)?; // [t, b, features]
    let get = |name: &str| params.get(name).ok_or_else(|| Error::Params(format!("missing parameter `{name}`")));
    let weight = get("head.weight")?; // [t, n_way, features]
    let bias = get("head.bias")?; // [t, n_way]
    let logits = x.matmul(&weight.transpose(1, 2)?)?; // [t, b, n_way]
    Ok(logits.broadcast_add(&bias.unsqueeze(1)?)?)
}

/// The feature extractor of [`forward`] (every conv block, flattened as PyTorch does): the
/// input of the linear head, `[t, b, features]` for `images` `[t, b, c, h, w]`.
pub fn features(config: &ConvNetConfig, params: &ParamMap, images: &Tensor) -> Result<Tensor> {
    let (t, b, c, h, w) = images.dims5()?;
    config.check_image(c, h, w)?;
    let get = |name: &str| params.get(name).ok_or_else(|| Error::Params(format!("missing parameter `{name}`")));
    // Channels first within each task, so batch-norm reductions run over contiguous memory.
    let mut x = images.transpose(1, 2)?.contiguous()?; // [t, c, b, h, w]
    for i in 0..config.depth {
        // The conv bias is a per-channel constant that batch norm's mean subtraction removes
        // exactly: it changes no output and its gradient is zero, so it is not added (the
        // parameter stays, for PyTorch-compatible parameter maps).
        get(&block_param(i, "conv.bias"))?;
        x = conv3x3_unbiased(&x, get(&block_param(i, "conv.weight"))?)?;
        x = batch_norm(&x, get(&block_param(i, "bn.weight"))?, get(&block_param(i, "bn.bias"))?)?;
        // relu(max(x)) = max(relu(x)): pooling first makes the ReLU pass 4x smaller.
        x = crate::pool::max_pool2x2_op(&x)?.relu()?;
    }
    let (_, c, _, fh, fw) = x.dims5()?;
    // PyTorch flattens each image as (c, h, w).
    Ok(x.reshape((t, c, b, fh * fw))?.transpose(1, 2)?.reshape((t, b, c * fh * fw))?)
}

/// 3x3 convolution, stride 1, zero padding 1, as im2col (a custom op, see
/// [`crate::im2col3x3`]) + one batched matmul per layer.
///
/// # Shapes
/// `x`: `[t, c_in, b, h, w]`; `weight`: `[t, c_out, c_in, 3, 3]`; `bias`: `[t, c_out]`;
/// returns `[t, c_out, b, h, w]`.
pub fn conv3x3(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let out = conv3x3_unbiased(x, weight)?;
    Ok(out.broadcast_add(&bias.unsqueeze(2)?.unsqueeze(3)?.unsqueeze(4)?)?)
}

/// [`conv3x3`] without the bias.
pub fn conv3x3_unbiased(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (t, c_in, b, h, w) = x.dims5()?;
    let c_out = weight.dim(1)?;
    // Column index c * 9 + (dy * 3 + dx), matching PyTorch's [c_out, c_in, kh, kw] flattening.
    let cols = crate::im2col::im2col3x3(x)?; // [t, c_in*9, b*h*w]
    let weight = weight.reshape((t, c_out, c_in * 9))?;
    let out = weight.matmul(&cols)?; // [t, c_out, b*h*w]
    Ok(out.reshape((t, c_out, b, h, w))?)
}

/// Batch norm with the batch's own statistics (biased variance, eps [`BN_EPS`]), per task and
/// channel.
///
/// # Shapes
/// `x`: `[t, c, b, h, w]`; `scale`, `shift`: `[t, c]`; returns the shape of `x`.
pub fn batch_norm(x: &Tensor, scale: &Tensor, shift: &Tensor) -> Result<Tensor> {
    let (t, c, b, h, w) = x.dims5()?;
    let flat = x.reshape((t, c, b * h * w))?; // [t, c, n]
    let mean = flat.mean_keepdim(D::Minus1)?; // [t, c, 1]
    let centred = flat.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    // Fold 1/std into the scale on the small [t, c, 1] side: one full-size multiply, not two.
    let gain = scale.unsqueeze(2)?.broadcast_div(&(var + BN_EPS)?.sqrt()?)?; // [t, c, 1]
    let out = centred.broadcast_mul(&gain)?.broadcast_add(&shift.unsqueeze(2)?)?;
    Ok(out.reshape((t, c, b, h, w))?)
}

/// 2x2 max-pool, stride 2, floor mode (an odd last row or column is dropped), written as a
/// reshape and two `max` reductions so that its gradient is right to every order. The net uses
/// the faster custom op [`crate::max_pool2x2_op`]; this is its independent reference.
///
/// # Shapes
/// `x`: `[t, c, b, h, w]`; returns `[t, c, b, h / 2, w / 2]`.
pub fn max_pool2x2(x: &Tensor) -> Result<Tensor> {
    let (t, c, b, h, w) = x.dims5()?;
    let (oh, ow) = (h / 2, w / 2);
    let x = if h % 2 == 1 || w % 2 == 1 { x.narrow(3, 0, 2 * oh)?.narrow(4, 0, 2 * ow)? } else { x.clone() };
    let x = x.reshape((t * c * b * oh, 2, ow, 2))?;
    let x = x.max(3)?.max(1)?; // [t*c*b*oh, ow]
    Ok(x.reshape((t, c, b, oh, ow))?)
}

/// Mean cross-entropy of each task's batch.
///
/// # Shapes
/// `logits`: `[t, b, n]`; `labels`: `[t, b]` (u32); returns `[t]`.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let n = logits.dim(2)?;
    // log-softmax from differentiable primitives (candle's softmax_last_dim has no backward).
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let log_z = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let log_probs = shifted.broadcast_sub(&log_z)?; // [t, b, n]
    let one_hot = one_hot(labels, n, logits.dtype())?;
    Ok((log_probs * one_hot)?.sum(D::Minus1)?.mean(D::Minus1)?.neg()?)
}

/// Share of each task's batch whose arg-max logit is the label.
///
/// # Shapes
/// `logits`: `[t, b, n]`; `labels`: `[t, b]` (u32); returns `[t]` (f32).
pub fn accuracy(logits: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let predicted = logits.argmax(D::Minus1)?; // [t, b]
    Ok(predicted.eq(labels)?.to_dtype(DType::F32)?.mean(D::Minus1)?)
}

fn one_hot(labels: &Tensor, n: usize, dtype: DType) -> Result<Tensor> {
    let classes = Tensor::arange(0u32, n as u32, labels.device())?;
    Ok(labels.unsqueeze(D::Minus1)?.broadcast_eq(&classes)?.to_dtype(dtype)?)
}
