/* A minimal ef_vi cluster client for `make hw-test`: it calls libciul's
 * ef_pd_alloc_by_name() against $EF_VI_CLUSTER_SOCKET (the agent's cluster
 * server), prints what it got, then makes the next calls an ef_vi
 * application makes, which need a NIC. Built by pkg/hwvi's test against
 * $ONLOAD_PREFIX; part of kube-efvi, not of Onload. */
#include <stdio.h>
#include <string.h>
#include <etherfabric/base.h>
#include <etherfabric/pd.h>
#include <etherfabric/vi.h>
#include <etherfabric/ef_vi.h>

int main(int argc, char** argv)
{
  ef_pd pd;
  ef_vi vi;
  ef_driver_handle dh = -1;
  int rc;

  if( argc != 2 ) {
    fprintf(stderr, "usage: %s [N@]cluster\n", argv[0]);
    return 2;
  }
  printf("libciul %s, driver interface %s\n", ef_vi_version_str(), ef_vi_driver_interface_str());
  memset(&pd, 0, sizeof(pd));
  rc = ef_pd_alloc_by_name(&pd, dh, argv[1], EF_PD_DEFAULT);
  printf("ef_pd_alloc_by_name(%s) = %d (%s)\n", argv[1], rc, rc < 0 ? strerror(-rc) : "ok");
  if( rc < 0 )
    return 1;
  printf("pd_resource_id=%u viset_resource_id=%u intf=%s cluster_dh_valid=%d\n",
         pd.pd_resource_id, pd.pd_cluster_viset_resource_id, pd.pd_intf_name, pd.pd_cluster_dh >= 0);
  fflush(stdout);

  /* What an application does next: its own driver handle ... */
  rc = ef_driver_open(&dh);
  printf("ef_driver_open = %d (%s)\n", rc, rc < 0 ? strerror(-rc) : "ok");
  /* ... and a VI from the cluster's VI set (through the passed handle when
   * it has none of its own). */
  rc = ef_vi_alloc_from_pd(&vi, rc < 0 ? pd.pd_cluster_dh : dh, &pd, dh, -1, -1, -1, NULL, -1, EF_VI_FLAGS_DEFAULT);
  printf("ef_vi_alloc_from_pd = %d (%s)\n", rc, rc < 0 ? strerror(-rc) : "ok");
  fflush(stdout);
  ef_pd_free(&pd, dh);
  printf("ef_pd_free done\n");
  return 0;
}
