"""Readers of users' data files (svmlight/LIBSVM, MovieLens, MNIST, CIFAR-10, ...)."""
