//! Host side of tinybayes: model building, training, export and device simulation.
pub mod commands;
pub mod data;
pub mod export;
pub mod export_resnet;
pub mod files;
pub mod halting;
pub mod idx;
pub mod import;
pub mod metrics;
pub mod plots;
pub mod report;
pub mod run_dir;
pub mod runner;
pub mod simulate;
pub mod train;
pub mod ui;
pub mod unsure;
