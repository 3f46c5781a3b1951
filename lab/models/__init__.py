"""Models: the synthetic shapes (`shapes`), building one locally (`build`), and what a model name
means and costs (`resolve`). Importing any of them imports no engine."""
