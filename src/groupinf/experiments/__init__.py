"""The paper's evaluation protocols, built on the library's public pieces."""
