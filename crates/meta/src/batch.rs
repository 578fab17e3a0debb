//! A meta-batch of episodes as tensors ([`TaskBatch`]) and the part of it adaptation reads
//! ([`TaskInputs`]).

use candle_core::{DType, Device, Tensor};
use fewshot_tasks::EpisodePixels;

use crate::error::{Error, Result};

/// Support and query sets of `t` tasks of one shape.
///
/// # Shapes
/// `support_images`: `[t, n_support, c, h, w]`, `support_labels`: `[t, n_support]` (u32),
/// `query_images`: `[t, n_query, c, h, w]`, `query_labels`: `[t, n_query]` (u32).
#[derive(Debug, Clone)]
pub struct TaskBatch {
    /// Support images.
    pub support_images: Tensor,
    /// Support labels, 0 to n_way - 1.
    pub support_labels: Tensor,
    /// Query images.
    pub query_images: Tensor,
    /// Query labels.
    pub query_labels: Tensor,
}

impl TaskBatch {
    /// Stack rendered episodes (of one shape and channel count) into a batch of `dtype` on
    /// `device`.
    pub fn from_pixels(episodes: &[EpisodePixels], dtype: DType, device: &Device) -> Result<TaskBatch> {
        let first = episodes.first().ok_or_else(|| Error::InvalidSetting {
            name: "episodes",
            value: "0".into(),
            expected: "at least one episode in a batch".into(),
        })?;
        let size = first.image_size;
        let shape = |e: &EpisodePixels| {
            format!(
                "{} support, {} query at {}px, {} channel(s)",
                e.support_labels.len(),
                e.query_labels.len(),
                e.image_size,
                e.channels
            )
        };
        for (i, e) in episodes.iter().enumerate() {
            if e.image_size != size
                || e.channels != first.channels
                || e.support_labels.len() != first.support_labels.len()
                || e.query_labels.len() != first.query_labels.len()
            {
                return Err(Error::RaggedBatch { episode: i, got: shape(e), want: shape(first) });
            }
        }
        let t = episodes.len();
        let (ns, nq, c) = (first.support_labels.len(), first.query_labels.len(), first.channels);
        let cat_f = |f: fn(&EpisodePixels) -> &Vec<f32>| {
            episodes.iter().flat_map(|e| f(e).iter().copied()).collect::<Vec<f32>>()
        };
        let cat_u = |f: fn(&EpisodePixels) -> &Vec<u32>| {
            episodes.iter().flat_map(|e| f(e).iter().copied()).collect::<Vec<u32>>()
        };
        Ok(TaskBatch {
            support_images: Tensor::from_vec(cat_f(|e| &e.support), (t, ns, c, size, size), device)?.to_dtype(dtype)?,
            support_labels: Tensor::from_vec(cat_u(|e| &e.support_labels), (t, ns), device)?,
            query_images: Tensor::from_vec(cat_f(|e| &e.query), (t, nq, c, size, size), device)?.to_dtype(dtype)?,
            query_labels: Tensor::from_vec(cat_u(|e| &e.query_labels), (t, nq), device)?,
        })
    }

    /// Tasks `start..start + len` of the batch.
    pub fn narrow(&self, start: usize, len: usize) -> Result<TaskBatch> {
        Ok(TaskBatch {
            support_images: self.support_images.narrow(0, start, len)?,
            support_labels: self.support_labels.narrow(0, start, len)?,
            query_images: self.query_images.narrow(0, start, len)?,
            query_labels: self.query_labels.narrow(0, start, len)?,
        })
    }

    /// Number of tasks.
    pub fn n_tasks(&self) -> usize {
        self.support_images.dims()[0]
    }

    /// What adaptation and labelling read: the support sets and the query images.
    pub fn inputs(&self) -> TaskInputs<'_> {
        TaskInputs {
            support_images: &self.support_images,
            support_labels: &self.support_labels,
            query_images: &self.query_images,
        }
    }
}

/// The labelled support sets and the (possibly unlabelled) query images of `t` tasks: what a
/// model adapts on and then labels.
///
/// # Shapes
/// `support_images`: `[t, n_support, c, h, w]`, `support_labels`: `[t, n_support]` (u32),
/// `query_images`: `[t, n_query, c, h, w]`.
#[derive(Debug, Clone, Copy)]
pub struct TaskInputs<'a> {
    /// Support images.
    pub support_images: &'a Tensor,
    /// Support labels, 0 to n_way - 1.
    pub support_labels: &'a Tensor,
    /// Query images.
    pub query_images: &'a Tensor,
}

impl TaskInputs<'_> {
    /// Number of tasks.
    pub fn n_tasks(&self) -> usize {
        self.support_images.dims()[0]
    }
}
