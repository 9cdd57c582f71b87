//! A fake engine for unit tests of the classifier. (being written)
