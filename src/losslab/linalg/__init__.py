"""Matrix-free linear algebra and interval arithmetic on torch."""
