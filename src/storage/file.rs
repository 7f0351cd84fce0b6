//! keyval's own file storage: segmented append-only log, hard state and snapshot files.
