//! Self-healing on the metadata leader: the pure planner (`plan`) and the named,
//! cancellable worker that carries its tasks out (`worker`).

pub mod plan;
pub(crate) mod worker;

pub use plan::{plan_rebalance, plan_repair, Cluster, CopyTask, NodeView, Plan, TrimTask};
