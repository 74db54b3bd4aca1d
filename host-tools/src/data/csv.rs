//! CSV tables: a header row naming a `label` column and the feature columns, then one example
//! per row. Features are f32 and the samples are vectors, `[N, D]` (model input `[1, 1, D]`);
//! labels are integers `0..K-1`. A table has no split: evaluation uses all of it.
//!
//! The file's size is checked against [`super::MAX_DATA_BYTES`] before it is read.

use std::fs::File;
use std::path::Path;

use super::{
    check_finite, class_indices, DataError, DataErrorKind, DataFile, Part, Samples, Values,
    MAX_DATA_BYTES,
};

/// The name of the label column.
pub const LABEL_COLUMN: &str = "label";

/// Reads a CSV table (see the module docs).
pub fn load_csv(path: &Path) -> Result<DataFile, DataError> {
    let err = |k| DataError::new(path, k);
    let file = File::open(path).map_err(|e| err(DataErrorKind::Io(e)))?;
    let size = file
        .metadata()
        .map_err(|e| err(DataErrorKind::Io(e)))?
        .len();
    if size > MAX_DATA_BYTES {
        return Err(err(DataErrorKind::TooLarge {
            what: "the table".into(),
            shape: Vec::new(),
            bytes: size,
            limit: MAX_DATA_BYTES,
        }));
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .trim(csv::Trim::All)
        .from_reader(std::io::BufReader::new(file));
    let header = reader
        .headers()
        .map_err(|e| {
            err(DataErrorKind::Corrupt(format!(
                "cannot read the header row: {e}"
            )))
        })?
        .clone();
    let label_col = header
        .iter()
        .position(|h| h == LABEL_COLUMN)
        .ok_or_else(|| {
            err(DataErrorKind::Shape(format!(
                "no {LABEL_COLUMN:?} column in the header row (a CSV data set needs a header \
                 naming a {LABEL_COLUMN:?} column and its feature columns)"
            )))
        })?;
    let features = header.len() - 1;
    if features == 0 {
        return Err(err(DataErrorKind::Shape(
            "no feature columns besides the label".into(),
        )));
    }
    let mut values: Vec<f32> = Vec::new();
    let mut labels: Vec<i128> = Vec::new();
    for (row, record) in reader.records().enumerate() {
        // Row numbers as a spreadsheet shows them: the header is row 1.
        let line = row + 2;
        let record = record.map_err(|e| {
            err(DataErrorKind::Corrupt(match e.kind() {
                csv::ErrorKind::UnequalLengths { len, .. } => format!(
                    "row {line} has {len} fields but the header has {}",
                    header.len()
                ),
                _ => format!("row {line}: {e}"),
            }))
        })?;
        for (col, field) in record.iter().enumerate() {
            if col == label_col {
                let label = field.parse::<i128>().map_err(|_| {
                    err(DataErrorKind::Corrupt(format!(
                        "row {line}: label {field:?} is not an integer"
                    )))
                })?;
                labels.push(label);
            } else {
                let x = field.parse::<f32>().map_err(|_| {
                    err(DataErrorKind::Corrupt(format!(
                        "row {line}, column {:?}: {field:?} is not a number",
                        &header[col]
                    )))
                })?;
                values.push(x);
            }
        }
    }
    if labels.is_empty() {
        return Err(err(DataErrorKind::Empty("no rows after the header".into())));
    }
    let samples = Samples {
        shape: [1, 1, features],
        values: Values::F32(values),
    };
    check_finite(&samples).map_err(err)?;
    let labels = class_indices(&labels).map_err(err)?;
    Ok(DataFile {
        path: path.to_path_buf(),
        train: Part {
            samples,
            labels: Some(labels),
        },
        test: None,
    })
}
