//! Placeholder: filled by the core issue (episodes, functional conv net, MAML).
#![deny(missing_docs)]
