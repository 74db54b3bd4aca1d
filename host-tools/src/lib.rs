//! Host side of tinybayes: model building, training, export and device simulation.
pub mod commands;
pub mod files;
pub mod report;
