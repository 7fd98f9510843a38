"""Networks (`nets`), building a denoiser from a config (`build`), and loading trained runs (`runs`)."""
