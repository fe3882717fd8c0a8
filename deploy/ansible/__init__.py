"""The Ansible playbook and role of `hemaedge deploy --inventory` (data only: YAML, a sample frame).

In the repository this folder is deploy/ansible/; installed, it is the package `hemaedge.ansible`,
so a regular (non-editable) install finds the playbook next to the code.
"""
