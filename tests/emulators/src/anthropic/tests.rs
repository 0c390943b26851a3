//! The Messages emulator's validation and answers.
