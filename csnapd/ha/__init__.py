"""High availability: leader election over etcd and the standby that answers while another node leads."""
