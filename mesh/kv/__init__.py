"""The only package that talks to etcd. Nothing under mesh/dataplane imports it."""
