//! `kestra-edge doctor`.
