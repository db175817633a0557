//! taskraft worker SDK (grows in the SDK issue).
