//! Job lifecycle tests (filled in below).
