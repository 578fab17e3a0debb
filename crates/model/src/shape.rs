//! [`ConvNetConfig`]: the net's shape, which the parameters, the candle reference and the
//! native engine all read.

use crate::error::{Error, Result};

/// Shape of the standard few-shot conv net: `depth` blocks of
/// [conv 3x3 pad 1 -> batch norm (batch statistics) -> ReLU -> 2x2 max-pool, floor mode],
/// then a linear layer to `n_way` logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvNetConfig {
    /// Input channels (1 for Omniglot).
    pub in_channels: usize,
    /// Side of the square input images.
    pub image_size: usize,
    /// Channels of every conv block.
    pub hidden: usize,
    /// Number of conv blocks.
    pub depth: usize,
    /// Number of output classes.
    pub n_way: usize,
}

impl ConvNetConfig {
    /// The course recipe's net: 1 x 28 x 28 input, 4 blocks of 64 channels.
    pub fn omniglot(n_way: usize) -> ConvNetConfig {
        ConvNetConfig { in_channels: 1, image_size: 28, hidden: 64, depth: 4, n_way }
    }

    /// Side of the feature map after `depth` floor-mode 2x2 pools.
    pub fn final_size(&self) -> usize {
        // Each block halves (rounding down): a shift, which a depth of 64 or more empties.
        u32::try_from(self.depth).ok().and_then(|d| self.image_size.checked_shr(d)).unwrap_or(0)
    }

    /// Inputs to the linear head: `hidden * final_size^2`.
    pub fn features(&self) -> usize {
        self.hidden * self.final_size() * self.final_size()
    }

    /// Check that images of `c` channels, `h` x `w` pixels fit the net.
    pub fn check_image(&self, c: usize, h: usize, w: usize) -> Result<()> {
        if (c, h, w) != (self.in_channels, self.image_size, self.image_size) {
            return Err(Error::Params(format!(
                "images are {c}x{h}x{w}, the net expects {}x{}x{}",
                self.in_channels, self.image_size, self.image_size
            )));
        }
        Ok(())
    }

    /// Check every field; errors name the field and the allowed range.
    pub fn validate(&self) -> Result<()> {
        let bad =
            |name, value, expected: &str| Err(Error::InvalidConfig { name, value, expected: expected.to_owned() });
        if self.in_channels == 0 {
            return bad("in_channels", 0, "at least 1");
        }
        if self.hidden == 0 {
            return bad("hidden", 0, "at least 1");
        }
        if self.depth == 0 {
            return bad("depth", 0, "at least 1");
        }
        if self.n_way < 2 {
            return bad("n_way", self.n_way, "at least 2");
        }
        if self.final_size() == 0 {
            // 2^depth as text: it overflows usize from depth 64 (and wrapped to 1 in this message).
            let need = 1u128.checked_shl(self.depth as u32).filter(|_| self.depth < 128);
            let need = need.map_or_else(|| format!("2^{}", self.depth), |n| n.to_string());
            return bad(
                "image_size",
                self.image_size,
                &format!("at least 2^depth = {need} for depth {} (each block halves the image)", self.depth),
            );
        }
        Ok(())
    }
}
