//! Library side of the `fewshot` command: the glue between the Omniglot cache
//! (`omniglot-data`), episode descriptions (`fewshot-tasks`) and meta-learning
//! (`fewshot-meta`). The binary in `main.rs` is a thin shell over it.
#![deny(missing_docs)]

pub mod checkpoint;
pub mod config;
pub mod evaluate;
pub mod omniglot;
pub mod predict;
pub mod train;
