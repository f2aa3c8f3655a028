"""TorchServe handlers shipped inside the package, so `zoo archive` finds them in a wheel as in a checkout.

`zoo.serve.handler_file()` gives the file torch-model-archiver puts in an archive; TorchServe imports it there.
"""
