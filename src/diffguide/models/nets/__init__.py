"""Networks F(x_in, c_noise, cond) -> output; preconditioning wrappers turn them into denoisers."""
