//! [`Layout`]: where each parameter lives in the engine's flat parameter vector, the net's
//! block sizes, and the conversions to and from the PyTorch-layout [`ParamMap`] (the only
//! place the two layouts meet).

use candle_core::{DType, Device, Tensor};

use super::real::Real;
use crate::error::Result;
use crate::params::{ParamMap, ParamRole, param_specs};
use crate::shape::ConvNetConfig;

/// One conv block's sizes and parameter offsets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Block {
    pub h: usize,
    pub w: usize,
    pub c_in: usize,
    pub c_out: usize,
    pub oh: usize,
    pub ow: usize,
    /// Offsets of the conv weight `[c_out, 3, 3, c_in]`, batch-norm scale and shift `[c_out]`.
    pub weight: usize,
    pub scale: usize,
    pub shift: usize,
}

impl Block {
    /// im2col row length: `9 * c_in`.
    pub fn k(&self) -> usize {
        9 * self.c_in
    }
    /// Input pixels per image.
    pub fn pixels(&self) -> usize {
        self.h * self.w
    }
    /// Output pixels per image.
    pub fn pooled(&self) -> usize {
        self.oh * self.ow
    }
}

/// Where each parameter lives in the engine's flat parameter vector, and the net's sizes.
///
/// Conv weights are stored `[c_out, 3, 3, c_in]` (so im2col rows are contiguous channel
/// runs) and the head sees each image's features in `(h, w, c)` order; conv biases are not
/// stored (batch norm cancels them).
#[derive(Debug, Clone)]
pub struct Layout {
    config: ConvNetConfig,
    pub(crate) blocks: Vec<Block>,
    pub(crate) head_weight: usize,
    pub(crate) head_bias: usize,
    len: usize,
}

impl Layout {
    /// The layout of `config`'s net, with offsets in the order of [`param_specs`].
    pub fn new(config: &ConvNetConfig) -> Result<Layout> {
        config.validate()?;
        let mut blocks = Vec::with_capacity(config.depth);
        let (mut size, mut at) = (config.image_size, 0);
        let (mut head_weight, mut head_bias) = (0, 0);
        for spec in param_specs(config) {
            let len: usize = spec.shape.iter().product();
            match spec.role {
                ParamRole::ConvWeight(_) => {
                    let (c_out, c_in) = (spec.shape[0], spec.shape[1]);
                    let (oh, ow) = (size / 2, size / 2);
                    let block = Block { h: size, w: size, c_in, c_out, oh, ow, weight: at, scale: 0, shift: 0 };
                    blocks.push(block);
                    size /= 2;
                }
                ParamRole::ConvBias(_) => continue,
                ParamRole::BnScale(i) => blocks[i].scale = at,
                ParamRole::BnShift(i) => blocks[i].shift = at,
                ParamRole::HeadWeight => head_weight = at,
                ParamRole::HeadBias => head_bias = at,
            }
            at += len;
        }
        Ok(Layout { config: *config, blocks, head_weight, head_bias, len: at })
    }

    /// Offset of the linear head (weight, then bias) in a flat vector: the head is the tail
    /// `head_start()..len()`, after every conv block's parameters.
    pub fn head_start(&self) -> usize {
        self.head_weight
    }

    /// Where the parameter of `role` lives in a flat vector (`None` for conv biases, which
    /// are not stored).
    pub fn range(&self, role: ParamRole) -> Option<std::ops::Range<usize>> {
        let c = &self.config;
        let (at, len) = match role {
            ParamRole::ConvWeight(i) => (self.blocks[i].weight, self.blocks[i].c_out * self.blocks[i].k()),
            ParamRole::ConvBias(_) => return None,
            ParamRole::BnScale(i) => (self.blocks[i].scale, self.blocks[i].c_out),
            ParamRole::BnShift(i) => (self.blocks[i].shift, self.blocks[i].c_out),
            ParamRole::HeadWeight => (self.head_weight, c.n_way * c.features()),
            ParamRole::HeadBias => (self.head_bias, c.n_way),
        };
        Some(at..at + len)
    }

    /// Length of a flat parameter (or gradient) vector.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the vector is empty (never, for a valid config).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The net's shape.
    pub fn config(&self) -> &ConvNetConfig {
        &self.config
    }

    /// Input values per image (`in_channels * image_size^2`).
    pub fn image_len(&self) -> usize {
        self.config.in_channels * self.config.image_size * self.config.image_size
    }

    /// Flatten a PyTorch-layout parameter map (no task dimension) into the engine's layout.
    /// Conv biases are not used: batch norm cancels them (see [`crate::forward`]).
    pub fn pack<T: Real>(&self, params: &ParamMap) -> Result<Vec<T>> {
        crate::params::check_params(&self.config, params)?;
        let mut flat = vec![T::default(); self.len];
        for spec in param_specs(&self.config) {
            let values = || T::tensor_values(&params[&spec.name]);
            match spec.role {
                ParamRole::ConvWeight(i) => {
                    let (b, w) = (&self.blocks[i], values()?); // w: [c_out, c_in, 3, 3]
                    for o in 0..b.c_out {
                        for c in 0..b.c_in {
                            for k in 0..9 {
                                flat[b.weight + o * b.k() + k * b.c_in + c] = w[(o * b.c_in + c) * 9 + k];
                            }
                        }
                    }
                }
                ParamRole::ConvBias(_) => {}
                ParamRole::BnScale(i) => self.copy_in(&mut flat, self.blocks[i].scale, &values()?),
                ParamRole::BnShift(i) => self.copy_in(&mut flat, self.blocks[i].shift, &values()?),
                ParamRole::HeadWeight => {
                    let w = values()?; // [n_way, c * fh * fw]
                    let (c, s) = (self.config.hidden, self.config.final_size() * self.config.final_size());
                    for j in 0..self.config.n_way {
                        for ch in 0..c {
                            for p in 0..s {
                                flat[self.head_weight + j * c * s + p * c + ch] = w[j * c * s + ch * s + p];
                            }
                        }
                    }
                }
                ParamRole::HeadBias => self.copy_in(&mut flat, self.head_bias, &values()?),
            }
        }
        Ok(flat)
    }

    fn copy_in<T: Real>(&self, flat: &mut [T], at: usize, values: &[T]) {
        flat[at..at + values.len()].copy_from_slice(values);
    }

    /// The inverse of [`Layout::pack`], as tensors of `dtype` on `device`; conv biases get
    /// zeros (their gradient is exactly zero).
    pub fn unpack<T: Real>(&self, flat: &[T], dtype: DType, device: &Device) -> Result<ParamMap> {
        assert_eq!(flat.len(), self.len, "flat vector of the wrong length");
        let get = |at: usize, n: usize| flat[at..at + n].iter().map(|v| v.to_f64()).collect::<Vec<f64>>();
        let mut params = ParamMap::new();
        for spec in param_specs(&self.config) {
            let values = match spec.role {
                ParamRole::ConvWeight(i) => {
                    let b = &self.blocks[i];
                    let mut w = vec![0f64; b.c_out * b.k()];
                    for o in 0..b.c_out {
                        for c in 0..b.c_in {
                            for k in 0..9 {
                                w[(o * b.c_in + c) * 9 + k] = flat[b.weight + o * b.k() + k * b.c_in + c].to_f64();
                            }
                        }
                    }
                    w
                }
                ParamRole::ConvBias(_) => vec![0.0; spec.shape[0]],
                ParamRole::BnScale(i) => get(self.blocks[i].scale, spec.shape[0]),
                ParamRole::BnShift(i) => get(self.blocks[i].shift, spec.shape[0]),
                ParamRole::HeadWeight => {
                    let (n, c, s) =
                        (self.config.n_way, self.config.hidden, self.config.final_size() * self.config.final_size());
                    let mut w = vec![0f64; n * c * s];
                    for j in 0..n {
                        for ch in 0..c {
                            for p in 0..s {
                                w[j * c * s + ch * s + p] = flat[self.head_weight + j * c * s + p * c + ch].to_f64();
                            }
                        }
                    }
                    w
                }
                ParamRole::HeadBias => get(self.head_bias, spec.shape[0]),
            };
            let tensor = Tensor::from_vec(values, spec.shape, device)?.to_dtype(dtype)?;
            params.insert(spec.name, tensor);
        }
        Ok(params)
    }

    /// Convert images from `[b, c, h, w]` (PyTorch order) to the engine's `[b, h, w, c]`.
    pub fn images_to_channels_last<T: Real>(&self, images: &[T]) -> Vec<T> {
        let c = self.config.in_channels;
        if c == 1 {
            return images.to_vec();
        }
        let hw = self.config.image_size * self.config.image_size;
        let mut out = vec![T::default(); images.len()];
        for (img_in, img_out) in images.chunks_exact(c * hw).zip(out.chunks_exact_mut(c * hw)) {
            for ch in 0..c {
                for p in 0..hw {
                    img_out[p * c + ch] = img_in[ch * hw + p];
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_tile_the_flat_vector_in_spec_order() {
        let config = ConvNetConfig { in_channels: 1, image_size: 8, hidden: 3, depth: 2, n_way: 4 };
        let layout = Layout::new(&config).unwrap();
        let mut next = 0;
        for spec in param_specs(&config) {
            match layout.range(spec.role) {
                None => assert!(matches!(spec.role, ParamRole::ConvBias(_))),
                Some(r) => {
                    assert_eq!(r.start, next, "{} starts where the previous one ends", spec.name);
                    assert_eq!(r.len(), spec.shape.iter().product::<usize>(), "{} has its shape's size", spec.name);
                    next = r.end;
                }
            }
        }
        assert_eq!(next, layout.len());
    }
}
